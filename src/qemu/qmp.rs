//! A QMP client: QEMU's JSON monitor protocol over a Unix socket. One request at a time;
//! events that arrive meanwhile are kept for [`Qmp::take_events`].

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

/// The longest message taken from QEMU; a `query-migrate` answer is a few KiB.
const MAX_LINE: u64 = 16 << 20;
/// How long the greeting and each answer may take.
pub const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("{}: no QMP socket there ({source})", path.display())]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not a QMP socket ({why})", path.display())]
    NotQmp { path: PathBuf, why: String },
    #[error("{}: QEMU closed the QMP connection", path.display())]
    Closed { path: PathBuf },
    #[error("{}: QMP connection failed: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: QMP sent a line that is not JSON: {why}", path.display())]
    Garbled { path: PathBuf, why: String },
    #[error("{}: {command} failed: {desc}", path.display())]
    Command {
        path: PathBuf,
        command: String,
        desc: String,
    },
}

pub struct Qmp {
    path: PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    events: VecDeque<Value>,
    next_id: u64,
    /// QEMU's version from the greeting ("10.0.2").
    version: String,
}

impl Qmp {
    /// Connects, checks the greeting and leaves capabilities negotiation mode.
    pub fn connect(path: &Path) -> Result<Qmp, QmpError> {
        let stream = UnixStream::connect(path).map_err(|source| QmpError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
        let io = |source| QmpError::Io {
            path: path.to_path_buf(),
            source,
        };
        stream.set_read_timeout(Some(TIMEOUT)).map_err(io)?;
        stream.set_write_timeout(Some(TIMEOUT)).map_err(io)?;
        let writer = stream.try_clone().map_err(io)?;
        let mut qmp = Qmp {
            path: path.to_path_buf(),
            reader: BufReader::new(stream),
            writer,
            events: VecDeque::new(),
            next_id: 1,
            version: String::new(),
        };
        let not_qmp = |why: String| QmpError::NotQmp {
            path: path.to_path_buf(),
            why,
        };
        let greeting = match qmp.read_message() {
            Ok(v) => v,
            Err(QmpError::Io { source, .. })
                if matches!(
                    source.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(not_qmp(format!(
                    "no greeting within {} s",
                    TIMEOUT.as_secs()
                )));
            }
            Err(QmpError::Garbled { why, .. }) => return Err(not_qmp(why)),
            Err(QmpError::Closed { .. }) => {
                return Err(not_qmp("closed without a greeting".into()));
            }
            Err(e) => return Err(e),
        };
        let Some(q) = greeting.get("QMP") else {
            return Err(not_qmp("the greeting has no QMP member".into()));
        };
        qmp.version = version_of(q);
        qmp.execute("qmp_capabilities", None)?;
        Ok(qmp)
    }

    pub fn version(&self) -> &str {
        &self.version
    }

    /// Runs `command` and returns its `return` value.
    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value, QmpError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut request = json!({ "execute": command, "id": id });
        if let Some(a) = arguments {
            request["arguments"] = a;
        }
        let mut line = request.to_string();
        line.push('\n');
        self.writer
            .write_all(line.as_bytes())
            .map_err(|source| self.io_error(source))?;
        loop {
            let msg = self.read_message()?;
            if msg.get("event").is_some() {
                self.events.push_back(msg);
                continue;
            }
            if msg.get("id").and_then(Value::as_u64) != Some(id) {
                continue;
            }
            if let Some(r) = msg.get("return") {
                return Ok(r.clone());
            }
            let desc = msg
                .pointer("/error/desc")
                .and_then(Value::as_str)
                .unwrap_or("an error without a description")
                .to_string();
            return Err(QmpError::Command {
                path: self.path.clone(),
                command: command.to_string(),
                desc,
            });
        }
    }

    /// Events QEMU sent since the last call, oldest first.
    pub fn take_events(&mut self) -> Vec<Value> {
        self.events.drain(..).collect()
    }

    fn io_error(&self, source: std::io::Error) -> QmpError {
        match source.kind() {
            std::io::ErrorKind::BrokenPipe
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::UnexpectedEof => QmpError::Closed {
                path: self.path.clone(),
            },
            _ => QmpError::Io {
                path: self.path.clone(),
                source,
            },
        }
    }

    fn read_message(&mut self) -> Result<Value, QmpError> {
        let mut line = Vec::new();
        let n = (&mut self.reader)
            .take(MAX_LINE)
            .read_until(b'\n', &mut line)
            .map_err(|e| self.io_error(e))?;
        if n == 0 {
            return Err(QmpError::Closed {
                path: self.path.clone(),
            });
        }
        if line.last() != Some(&b'\n') && n as u64 >= MAX_LINE {
            return Err(QmpError::Garbled {
                path: self.path.clone(),
                why: format!("a message longer than {MAX_LINE} bytes"),
            });
        }
        serde_json::from_slice(&line).map_err(|e| QmpError::Garbled {
            path: self.path.clone(),
            why: e.to_string(),
        })
    }
}

fn version_of(q: &Value) -> String {
    let v = &q["version"]["qemu"];
    match (
        v["major"].as_u64(),
        v["minor"].as_u64(),
        v["micro"].as_u64(),
    ) {
        (Some(a), Some(b), Some(c)) => format!("{a}.{b}.{c}"),
        _ => "unknown".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    fn serve(script: impl FnOnce(UnixStream) + Send + 'static) -> (tempdir::Dir, PathBuf) {
        let dir = tempdir::Dir::new();
        let path = dir.0.join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            script(s);
        });
        (dir, path)
    }

    mod tempdir {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Dir {
                let p = std::env::temp_dir().join(format!(
                    "fl-qmp-{}-{:?}",
                    std::process::id(),
                    std::thread::current().id()
                ));
                let _ = std::fs::remove_dir_all(&p);
                std::fs::create_dir_all(&p).unwrap();
                Dir(p)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    fn reply(s: &mut UnixStream, line: &str) {
        s.write_all(line.as_bytes()).unwrap();
        s.write_all(b"\r\n").unwrap();
    }

    fn read_request(r: &mut BufReader<UnixStream>) -> Value {
        let mut l = String::new();
        r.read_line(&mut l).unwrap();
        serde_json::from_str(&l).unwrap()
    }

    #[test]
    fn negotiates_runs_commands_and_keeps_events() {
        let (_d, path) = serve(|mut s| {
            let mut r = BufReader::new(s.try_clone().unwrap());
            reply(
                &mut s,
                r#"{"QMP": {"version": {"qemu": {"micro": 2, "minor": 0, "major": 10}, "package": ""}, "capabilities": []}}"#,
            );
            let caps = read_request(&mut r);
            assert_eq!(caps["execute"], "qmp_capabilities");
            reply(
                &mut s,
                &format!(r#"{{"return": {{}}, "id": {}}}"#, caps["id"]),
            );
            let q = read_request(&mut r);
            reply(
                &mut s,
                r#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "MIGRATION", "data": {"status": "postcopy-active"}}"#,
            );
            reply(
                &mut s,
                &format!(r#"{{"return": {{"status": "active"}}, "id": {}}}"#, q["id"]),
            );
            let bad = read_request(&mut r);
            reply(
                &mut s,
                &format!(
                    r#"{{"error": {{"class": "GenericError", "desc": "no such thing"}}, "id": {}}}"#,
                    bad["id"]
                ),
            );
        });
        let mut q = Qmp::connect(&path).unwrap();
        assert_eq!(q.version(), "10.0.2");
        let r = q.execute("query-migrate", None).unwrap();
        assert_eq!(r["status"], "active");
        let ev = q.take_events();
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0]["data"]["status"], "postcopy-active");
        let e = q.execute("nonsense", None).unwrap_err().to_string();
        assert!(e.ends_with("nonsense failed: no such thing"), "{e}");
    }

    #[test]
    fn a_socket_that_is_not_qmp_is_named_as_such() {
        let (_d, path) = serve(|mut s| {
            s.write_all(b"HTTP/1.1 400 Bad Request\r\n").unwrap();
            std::thread::sleep(Duration::from_millis(200));
        });
        let e = Qmp::connect(&path).err().unwrap().to_string();
        assert!(e.contains("not a QMP socket"), "{e}");
    }

    #[test]
    fn a_missing_socket_says_so() {
        let e = Qmp::connect(Path::new("/nonexistent/qmp.sock"))
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.starts_with("/nonexistent/qmp.sock: no QMP socket there"),
            "{e}"
        );
    }
}
