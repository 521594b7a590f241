//! `faultline qemu`: a real QEMU pair on this host, a source and a destination, each with a
//! QMP socket for the launcher and one for the observer, the destination's post-copy trace
//! events on, and faultline's own guest (a Multiboot image of its workloads) reporting
//! through a debug console. The pair is stopped and its files removed on drop.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use super::qmp::{Qmp, QmpError};
use super::watch::Target;
use crate::contract::Workload;
use crate::guest::boot;
use crate::guest::ports::ConsoleReport;
use crate::units::Rate;

pub const QEMU_BINARY: &str = "qemu-system-x86_64";
/// The debug console's port in faultline's guest.
const CONSOLE_PORT: u16 = 0xE9;
/// Time for a QEMU to open its QMP socket, and for the guest to boot.
const START_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error(
        "QEMU is not installed ({QEMU_BINARY} is not on PATH): on Debian, add bookworm-backports to apt's sources, then `apt-get install -t bookworm-backports --no-install-recommends qemu-system-x86`"
    )]
    NotInstalled,
    #[error("cannot build the guest: {0}")]
    Guest(#[from] crate::guest::GuestError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("the {side} QEMU exited before it was ready: {why}")]
    Died { side: &'static str, why: String },
    #[error("the {side} QEMU did not open its QMP socket within {} s", START_TIMEOUT.as_secs())]
    NoQmp { side: &'static str },
    #[error("the guest did not start on the source within {} s", START_TIMEOUT.as_secs())]
    GuestSilent,
    #[error(transparent)]
    Qmp(#[from] QmpError),
}

/// How QEMU runs the guest's code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Accel {
    /// QEMU's own translator: steady on every host.
    Tcg,
    /// /dev/kvm.
    Kvm,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Tcg => "tcg",
            Accel::Kvm => "kvm",
        }
    }
}

#[derive(Debug, Clone)]
pub struct LaunchConfig {
    pub vcpus: usize,
    pub mem_bytes: u64,
    pub workload: Workload,
    pub accel: Accel,
    /// The source's bandwidth limit, pre-copy and post-copy alike.
    pub fetch_rate: Rate,
}

/// Where QEMU is, if it is on PATH.
pub fn find_qemu() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(QEMU_BINARY))
        .find(|p| p.is_file())
}

/// One QEMU process; killed on drop if still running.
struct Vm {
    side: &'static str,
    child: Child,
    launch: Option<Qmp>,
    stderr: PathBuf,
}

impl Vm {
    fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(format!("{status}; {}", last_line(&self.stderr))),
            _ => None,
        }
    }

    fn qmp(&mut self) -> Result<&mut Qmp, LaunchError> {
        self.launch
            .as_mut()
            .ok_or(LaunchError::NoQmp { side: self.side })
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Some(q) = self.launch.as_mut() {
            let _ = q.execute("quit", None);
        }
        let end = Instant::now() + Duration::from_secs(3);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn last_line(path: &Path) -> String {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| {
            s.lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .map(str::to_string)
        })
        .unwrap_or_else(|| "nothing on its stderr".into())
}

/// A source and a destination QEMU, ready to migrate.
pub struct QemuPair {
    dir: PathBuf,
    src: Option<Vm>,
    dst: Option<Vm>,
    vcpus: usize,
}

impl QemuPair {
    pub fn start(c: &LaunchConfig) -> Result<QemuPair, LaunchError> {
        let qemu = find_qemu().ok_or(LaunchError::NotInstalled)?;
        let image = boot::build(&c.workload, c.vcpus, c.mem_bytes, CONSOLE_PORT)?;
        static PAIRS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = PAIRS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("faultline-qemu-{}-{n}", std::process::id()));
        let io = |what: String| move |source| LaunchError::Io { what, source };
        std::fs::create_dir_all(&dir).map_err(io(format!("cannot create {}", dir.display())))?;
        // From here on the pair's drop removes the folder and stops what was started.
        let mut pair = QemuPair {
            dir: dir.clone(),
            src: None,
            dst: None,
            vcpus: c.vcpus,
        };
        let guest = dir.join("guest.bin");
        std::fs::write(&guest, &image.bytes)
            .map_err(io(format!("cannot write {}", guest.display())))?;
        let spawn = |side: &'static str, incoming: bool| -> Result<Vm, LaunchError> {
            let mut cmd = Command::new(&qemu);
            cmd.args(qemu_args(c, &dir, side, &guest));
            if incoming {
                cmd.args(["-incoming", "defer"]);
            }
            let stderr = dir.join(format!("{side}.stderr"));
            let err = std::fs::File::create(&stderr)
                .map_err(io(format!("cannot create {}", stderr.display())))?;
            // SAFETY: prctl is async-signal-safe; the child dies with the thread that
            // started it, so no QEMU outlives a faultline that was killed.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            let child = cmd
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(err)
                .spawn()
                .map_err(io(format!("cannot start {}", qemu.display())))?;
            Ok(Vm {
                side,
                child,
                launch: None,
                stderr,
            })
        };
        pair.dst = Some(spawn("dst", true)?);
        pair.src = Some(spawn("src", false)?);
        pair.connect()?;
        pair.configure(c)?;
        Ok(pair)
    }

    fn vm(&mut self, side: &'static str) -> Result<&mut Vm, LaunchError> {
        let vm = if side == "dst" {
            self.dst.as_mut()
        } else {
            self.src.as_mut()
        };
        vm.ok_or(LaunchError::NoQmp { side })
    }

    fn sock(&self, side: &str, role: &str) -> PathBuf {
        self.dir.join(format!("{side}-{role}.qmp"))
    }

    fn connect(&mut self) -> Result<(), LaunchError> {
        let deadline = Instant::now() + START_TIMEOUT;
        for side in ["dst", "src"] {
            let path = self.sock(side, "launch");
            let vm = self.vm(side)?;
            loop {
                if let Some(why) = vm.exited() {
                    return Err(LaunchError::Died { side: vm.side, why });
                }
                if path.exists()
                    && let Ok(q) = Qmp::connect(&path)
                {
                    vm.launch = Some(q);
                    break;
                }
                if Instant::now() > deadline {
                    return Err(LaunchError::NoQmp { side: vm.side });
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }

    fn configure(&mut self, c: &LaunchConfig) -> Result<(), LaunchError> {
        let caps = |names: &[&str]| {
            json!({ "capabilities": names.iter()
                .map(|n| json!({"capability": n, "state": true}))
                .collect::<Vec<_>>() })
        };
        let uri = self.migration_uri();
        let dst = self.vm("dst")?.qmp()?;
        dst.execute(
            "migrate-set-capabilities",
            Some(caps(&["postcopy-ram", "postcopy-blocktime", "events"])),
        )?;
        dst.execute("migrate-incoming", Some(json!({ "uri": uri })))?;
        let src = self.vm("src")?.qmp()?;
        src.execute(
            "migrate-set-capabilities",
            Some(caps(&["postcopy-ram", "events"])),
        )?;
        let (postcopy, precopy) = match c.fetch_rate.bytes_per_sec() {
            Some(b) => (b.max(1), b.max(1)),
            None => (0, 1u64 << 40),
        };
        src.execute(
            "migrate-set-parameters",
            Some(json!({"max-bandwidth": precopy, "max-postcopy-bandwidth": postcopy})),
        )?;
        Ok(())
    }

    fn migration_uri(&self) -> String {
        format!("unix:{}", self.dir.join("migration.sock").display())
    }

    /// What the observer follows: its own QMP sockets, the trace, the guest's consoles.
    pub fn target(&self, workload: &Workload) -> Target {
        Target {
            dst_qmp: self.sock("dst", "observer"),
            trace: self.dir.join("dst.trace"),
            src_qmp: Some(self.sock("src", "observer")),
            recover_uri: Some(format!("unix:{}", self.dir.join("recover.sock").display())),
            console: Some(self.dir.join("dst.console")),
            src_console: Some(self.dir.join("src.console")),
            scenario: "qemu".into(),
            workload: workload.to_string(),
        }
    }

    /// Waits until every vCPU of the guest runs its workload on the source.
    pub fn wait_guest(&mut self) -> Result<(), LaunchError> {
        let console = self.dir.join("src.console");
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let bytes = std::fs::read(&console).unwrap_or_default();
            let started = bytes
                .iter()
                .filter_map(|&b| match ConsoleReport::decode(b) {
                    ConsoleReport::Started { vcpu } => Some(vcpu),
                    _ => None,
                })
                .collect::<std::collections::BTreeSet<_>>();
            if started.len() >= self.vcpus {
                return Ok(());
            }
            if let Some(why) = self.vm("src")?.exited() {
                return Err(LaunchError::Died { side: "src", why });
            }
            if Instant::now() > deadline {
                return Err(LaunchError::GuestSilent);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts the migration (pre-copy first).
    pub fn migrate(&mut self) -> Result<(), LaunchError> {
        let uri = self.migration_uri();
        self.vm("src")?
            .qmp()?
            .execute("migrate", Some(json!({ "uri": uri })))?;
        Ok(())
    }

    /// Switches the running migration to post-copy.
    pub fn start_postcopy(&mut self) -> Result<(), LaunchError> {
        self.vm("src")?
            .qmp()?
            .execute("migrate-start-postcopy", None)?;
        Ok(())
    }

    /// A QEMU that has exited, and how, if one has.
    pub fn died(&mut self) -> Option<String> {
        for vm in [self.src.as_mut(), self.dst.as_mut()].into_iter().flatten() {
            if let Some(why) = vm.exited() {
                return Some(format!("the {} QEMU exited: {why}", vm.side));
            }
        }
        None
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for QemuPair {
    fn drop(&mut self) {
        // Stop both QEMUs before their files go.
        self.src = None;
        self.dst = None;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The command line of one side; both sides must describe the same machine.
pub fn qemu_args(c: &LaunchConfig, dir: &Path, side: &str, guest: &Path) -> Vec<String> {
    let p = |name: String| dir.join(name).display().to_string();
    let mut a: Vec<String> = vec![
        "-machine".into(),
        "pc".into(),
        "-accel".into(),
        c.accel.as_str().into(),
        "-m".into(),
        format!("{}M", c.mem_bytes >> 20),
        "-smp".into(),
        c.vcpus.to_string(),
        "-display".into(),
        "none".into(),
        "-nodefaults".into(),
        "-no-user-config".into(),
        "-name".into(),
        format!("faultline-{side},debug-threads=on"),
        "-kernel".into(),
        guest.display().to_string(),
        "-chardev".into(),
        format!("file,id=console,path={}", p(format!("{side}.console"))),
        "-device".into(),
        format!("isa-debugcon,iobase={CONSOLE_PORT:#x},chardev=console"),
        "-qmp".into(),
        format!(
            "unix:{},server=on,wait=off",
            p(format!("{side}-launch.qmp"))
        ),
        "-qmp".into(),
        format!(
            "unix:{},server=on,wait=off",
            p(format!("{side}-observer.qmp"))
        ),
        "-msg".into(),
        "timestamp=on".into(),
        "-D".into(),
        p(format!("{side}.trace")),
    ];
    for e in super::trace::EVENT_PATTERNS {
        a.push("-trace".into());
        a.push((*e).to_string());
    }
    a
}
