//! Whether the binaries' human-readable output may carry ANSI colour codes: the same rule for
//! `edgefleet` and `edgefleet-agent`, so logs piped to a file or a journal stay plain text.
//! The callers ask the terminal and the environment; this stays pure, like the rest of the crate.

use std::ffi::OsStr;

/// Colour only on a terminal, and never when `NO_COLOR` is set to a non-empty value
/// (<https://no-color.org>: an empty `NO_COLOR` does not count).
pub fn use_colour(is_terminal: bool, no_color: Option<&OsStr>) -> bool {
    is_terminal && no_color.is_none_or(OsStr::is_empty)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal() {
        assert!(use_colour(true, None));
        assert!(!use_colour(false, None));
    }

    #[test]
    fn any_non_empty_no_color_disables_colour() {
        for value in ["1", "0", "false", "yes"] {
            assert!(
                !use_colour(true, Some(OsStr::new(value))),
                "NO_COLOR={value}"
            );
            assert!(
                !use_colour(false, Some(OsStr::new(value))),
                "NO_COLOR={value}"
            );
        }
    }

    #[test]
    fn an_empty_no_color_is_ignored() {
        assert!(use_colour(true, Some(OsStr::new(""))));
        assert!(!use_colour(false, Some(OsStr::new(""))));
    }
}
