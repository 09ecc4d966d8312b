//! `edgefleet get md -w`, like `kubectl get -w`: the table once, then one line each time a
//! deployment's row changes (its AGE aside) or it goes away, in the first table's columns.

use std::collections::BTreeMap;

use super::render::{column_widths, line, table};

/// What the watch has printed so far.
#[derive(Default)]
pub struct RowWatch {
    widths: Option<Vec<usize>>,
    /// Each row by its first cell (the name), without its last (AGE).
    seen: BTreeMap<String, Vec<String>>,
}

impl RowWatch {
    /// What to print for the rows as they are now: the whole table the first time, then the
    /// rows that changed, and for a row that is gone its last state with PHASE `Deleted`.
    pub fn update(&mut self, header: &[&str], rows: &[Vec<String>]) -> String {
        let compared = |row: &Vec<String>| row[..row.len().saturating_sub(1)].to_vec();
        let mut out = String::new();
        let widths = match &self.widths {
            Some(widths) => widths.clone(),
            None => {
                out.push_str(&table(header, rows));
                let widths = column_widths(header, rows);
                self.widths = Some(widths.clone());
                for row in rows {
                    self.seen.insert(row[0].clone(), compared(row));
                }
                return out;
            }
        };
        for row in rows.iter().filter(|row| !row.is_empty()) {
            let now = compared(row);
            if self.seen.get(&row[0]) != Some(&now) {
                out.push_str(&line(&widths, row));
                self.seen.insert(row[0].clone(), now);
            }
        }
        let gone: Vec<String> = self
            .seen
            .keys()
            .filter(|name| !rows.iter().any(|row| row.first() == Some(*name)))
            .cloned()
            .collect();
        for name in gone {
            if let Some(mut last) = self.seen.remove(&name) {
                if let Some(phase) = last.get_mut(1) {
                    *phase = "Deleted".into();
                }
                out.push_str(&line(&widths, &last));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, phase: &str, step: u32, age: &str) -> Vec<String> {
        vec![name.into(), phase.into(), step.to_string(), age.into()]
    }

    const HEADER: [&str; 4] = ["NAME", "PHASE", "STEP", "AGE"];

    #[test]
    fn the_table_first_then_only_changed_rows() {
        let mut watch = RowWatch::default();
        let first = watch.update(&HEADER, &[row("chat", "Pending", 0, "1s")]);
        assert_eq!(
            first,
            "NAME   PHASE     STEP   AGE\nchat   Pending   0      1s\n"
        );
        // Only the age moved: nothing to say.
        assert_eq!(
            watch.update(&HEADER, &[row("chat", "Pending", 0, "2s")]),
            ""
        );
        assert_eq!(
            watch.update(&HEADER, &[row("chat", "Progressing", 1, "3s")]),
            "chat   Progressing   1      3s\n"
        );
        // A new deployment appears; the unchanged one stays quiet.
        assert_eq!(
            watch.update(
                &HEADER,
                &[
                    row("chat", "Progressing", 1, "4s"),
                    row("vad", "Pending", 0, "0s")
                ]
            ),
            "vad    Pending   0      0s\n"
        );
    }

    #[test]
    fn a_deployment_that_goes_away_is_shown_deleted_once() {
        let mut watch = RowWatch::default();
        watch.update(&HEADER, &[row("chat", "Succeeded", 2, "9s")]);
        assert_eq!(watch.update(&HEADER, &[]), "chat   Deleted     2\n");
        assert_eq!(watch.update(&HEADER, &[]), "");
    }
}
