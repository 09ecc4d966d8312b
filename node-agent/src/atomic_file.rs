//! Crash-safe file writes: a reader (or the agent after a power cut) sees the old content or
//! the new, never a mix. Shared by the artifact store, the telemetry spool and the sequence
//! counter.

use std::io::{self, Write};
use std::path::Path;

/// Writes `bytes` to `path` so that readers see the old or the new content, never a mix.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    sync_dir(path);
    Ok(())
}

/// Makes a rename in `path`'s directory durable.
pub fn sync_dir(path: &Path) {
    if let Some(parent) = path.parent()
        && let Ok(dir) = std::fs::File::open(parent)
    {
        let _ = dir.sync_all();
    }
}
