//! The audit log every daemon writes: one JSON object per line, each with a
//! `time` field first, appended with a single `write(2)` so concurrent writers
//! and readers never see a torn line.
//!
//! `--audit-log PATH` appends to PATH (created mode 0600); `--audit-log -`
//! writes to stdout.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::{Map, Value};

enum Target {
    Stdout,
    File(File),
}

/// A shared, thread-safe JSON-lines writer.
pub struct AuditLog {
    target: Mutex<Target>,
    describe: String,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot open audit log {0}")]
pub struct AuditOpenError(PathBuf, #[source] io::Error);

impl AuditLog {
    /// Opens `spec`: `-` for stdout, otherwise a file opened for appending.
    pub fn open(spec: &Path) -> Result<Self, AuditOpenError> {
        if spec == Path::new("-") {
            return Ok(AuditLog {
                target: Mutex::new(Target::Stdout),
                describe: "stdout".into(),
            });
        }
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(spec)
            .map_err(|e| AuditOpenError(spec.to_owned(), e))?;
        Ok(AuditLog {
            target: Mutex::new(Target::File(file)),
            describe: spec.display().to_string(),
        })
    }

    /// Writes one record. `fields` is a JSON object; `time` is put first.
    /// A failing write is logged (rate-limited), never fatal.
    pub fn record(&self, fields: Value) {
        let mut obj = Map::new();
        obj.insert("time".into(), Value::String(crate::time::rfc3339_now()));
        if let Value::Object(m) = fields {
            obj.extend(m);
        }
        let mut line = Value::Object(obj).to_string();
        line.push('\n');
        let mut target = self.target.lock().unwrap_or_else(|e| e.into_inner());
        let res = match &mut *target {
            Target::Stdout => io::stdout().lock().write_all(line.as_bytes()),
            Target::File(f) => f.write_all(line.as_bytes()),
        };
        if let Err(e) = res {
            crate::ratelimited!(
                log::Level::Warn,
                "cannot write audit log {}: {e}",
                self.describe
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn appends_one_json_object_per_line_with_time_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        std::fs::write(&path, "{\"earlier\":1}\n").unwrap();
        let log = AuditLog::open(&path).unwrap();
        log.record(serde_json::json!({"op": "create", "path": "a\nb"}));
        log.record(serde_json::json!({"op": "unlink", "result": "ok"}));
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[1].starts_with("{\"time\":\""), "{}", lines[1]);
        let v: Value = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(v["op"], "create");
        assert_eq!(v["path"], "a\nb");
        let v: Value = serde_json::from_str(lines[2]).unwrap();
        assert_eq!(v["result"], "ok");
    }

    #[test]
    fn new_file_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new.jsonl");
        let _log = AuditLog::open(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        assert!(AuditLog::open(&dir.path().join("missing/x")).is_err());
    }
}
