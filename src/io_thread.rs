//! The I/O thread: one per process, started by the first yielding call, it
//! drives this process's runtime and wakes waiting Lua callers.
//!
//! A Lua caller in a yieldable nginx phase cannot block, and nginx cannot
//! wait on a file descriptor it did not open itself; it can wait on a
//! cosocket. So this thread listens on a unix socket (the wake socket): the
//! caller submits a job ([`jobs`]), connects a cosocket to the wake socket
//! (nginx keeps those connections alive), sends the job's number and a
//! newline, and waits for one byte. The listener starts the job, and when it
//! is done stores its output and writes `1` (`0` when there is no such
//! job). The caller, woken by nginx's event loop, takes the output. If the
//! cosocket closes (or sends anything) while the job runs, the caller went
//! away: the job is abandoned.
//!
//! Only this process may use the socket: a connection whose peer (by
//! `SO_PEERCRED`) is another process is closed at once. The socket lives in
//! a private directory and is removed when the process exits.
//!
//! Fork safety: nothing here exists before the first yielding call, which
//! nginx only makes in a worker; a forked child starts its own. The thread
//! blocks every signal, as nginx's own threads do, so that signals meant for
//! the process (nginx's SIGALRM, SIGCHLD, SIGHUP, ...) reach the nginx
//! thread; threads it spawns (tokio's blocking pool, for DNS) inherit that.

use std::cell::Cell;
use std::ffi::CString;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::env_snapshot;
use crate::error::{Error, ErrorKind, Result};
use crate::jobs::{self, First};
use crate::process::{self, PerProcess};

/// This process's I/O thread, once started.
struct IoThread {
    /// `unix:<path>`, as a cosocket connects to it.
    address: String,
}

static IO_THREAD: PerProcess<IoThread> = PerProcess::new();

thread_local! {
    static ON_IO_THREAD: Cell<bool> = const { Cell::new(false) };
}

/// The name of the I/O thread (`/proc/<pid>/task/<tid>/comm`).
pub const THREAD_NAME: &str = "kong_rds_iam-io";

/// The address of this process's wake socket (`unix:/path`), starting the
/// I/O thread on first use. `prefix` is nginx's prefix: the socket goes to
/// `<prefix>/sockets` when that is writable.
pub fn wake_address(prefix: Option<&Path>) -> Result<&'static str> {
    IO_THREAD.get_or_try_init(|| start(prefix)).map(|t| t.address.as_str())
}

/// Whether this process's I/O thread runs.
pub fn running() -> bool {
    IO_THREAD.get().is_some()
}

/// Whether the calling thread is the I/O thread (where nothing may block).
pub fn is_current() -> bool {
    ON_IO_THREAD.with(Cell::get)
}

fn start(prefix: Option<&Path>) -> Result<IoThread> {
    let runtime = process::runtime()?;
    let (dir, temporary) = socket_dir(prefix)?;
    let pid = std::process::id();
    sweep_stale(&dir, pid);
    let path = dir.join(format!("kong_rds_iam.{pid}.sock"));
    let _ = std::fs::remove_file(&path);
    let listener =
        std::os::unix::net::UnixListener::bind(&path).map_err(|e| io_error(format!("cannot listen on {}: {e}", path.display())))?;
    let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
    remove_at_exit(pid, &path, temporary.then_some(dir.as_path()));
    listener.set_nonblocking(true).map_err(|e| io_error(format!("cannot set up the wake socket: {e}")))?;

    let spawned = with_signals_blocked(|| {
        std::thread::Builder::new().name(THREAD_NAME.into()).spawn(move || {
            ON_IO_THREAD.with(|on| on.set(true));
            runtime.block_on(async move {
                match UnixListener::from_std(listener) {
                    Ok(listener) => accept(listener).await,
                    Err(e) => eprintln!("kong_rds_iam: the i/o thread cannot use its wake socket: {e}"),
                }
            });
        })
    });
    spawned.map_err(|e| Error::new(ErrorKind::Runtime, format!("cannot start the i/o thread: {e}")))?;
    Ok(IoThread { address: format!("unix:{}", path.display()) })
}

async fn accept(listener: UnixListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(serve(stream));
            }
            // Out of descriptors, say: try again shortly instead of spinning.
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
        }
    }
}

/// One cosocket connection: a job number per line, one byte back per job.
async fn serve(mut stream: UnixStream) {
    let own = std::process::id() as i32;
    if !stream.peer_cred().is_ok_and(|cred| cred.pid() == Some(own)) {
        return;
    }
    let (read, mut write) = stream.split();
    let mut reader = BufReader::new(read);
    let mut line = Vec::with_capacity(24);
    loop {
        line.clear();
        // A job number is at most 20 digits: a longer line is not ours.
        match (&mut reader).take(32).read_until(b'\n', &mut line).await {
            Ok(n) if n > 0 && line.ends_with(b"\n") => {}
            _ => return,
        }
        let job = std::str::from_utf8(&line[..line.len() - 1]).ok().and_then(|s| s.parse::<u64>().ok());
        let Some((id, future)) = job.and_then(|id| Some((id, jobs::start(id)?))) else {
            if write.write_all(b"0").await.is_err() {
                return;
            }
            continue;
        };
        // A job that is done is reported even if the peer also closed.
        match jobs::first(tokio::spawn(future), reader.fill_buf()).await {
            First::Left(outcome) => {
                let output = outcome.unwrap_or_else(|_| Box::new(jobs::Panicked));
                if jobs::finish(id, output) && write.write_all(b"1").await.is_err() {
                    jobs::abandon(id);
                    return;
                }
            }
            // EOF (or stray bytes) while the job runs: the caller went away.
            // The task goes on (a query cancels itself); its output is dropped.
            First::Right(_) => {
                jobs::abandon(id);
                return;
            }
        }
    }
}

/// The wake socket's directory, and whether it is a temporary one of ours:
/// `KONG_RDS_IAM_SOCKET_DIR` (frozen at load), else `<prefix>/sockets`
/// (made private when missing) when writable, else a new private directory
/// under `TMPDIR`. A path too long for a unix socket also falls back to it.
fn socket_dir(prefix: Option<&Path>) -> Result<(PathBuf, bool)> {
    let snapshot = env_snapshot::get();
    if let Some(dir) = snapshot.var("KONG_RDS_IAM_SOCKET_DIR") {
        let dir = PathBuf::from(dir);
        if !usable(&dir) {
            return Err(io_error(format!("KONG_RDS_IAM_SOCKET_DIR {} is not a writable directory", dir.display())));
        }
        return Ok((dir, false));
    }
    if let Some(prefix) = prefix {
        let dir = prefix.join("sockets");
        if usable(&dir) && fits(&dir) {
            return Ok((dir, false));
        }
    }
    let base = snapshot.var("TMPDIR").unwrap_or("/tmp");
    let template = CString::new(format!("{}/kong_rds_iam.XXXXXX", base.trim_end_matches('/')))
        .map_err(|_| io_error("TMPDIR holds a zero byte".into()))?;
    let mut bytes = template.into_bytes_with_nul();
    // SAFETY: `bytes` is a writable NUL-terminated template, as mkdtemp wants.
    let made = unsafe { libc::mkdtemp(bytes.as_mut_ptr().cast()) };
    if made.is_null() {
        return Err(io_error(format!("cannot make a directory for the wake socket under {base}: {}", std::io::Error::last_os_error())));
    }
    bytes.pop();
    let dir = PathBuf::from(String::from_utf8_lossy(&bytes).into_owned());
    Ok((dir, true))
}

/// A directory we can create sockets in (made with mode 0700 when missing).
fn usable(dir: &Path) -> bool {
    if !dir.exists() && std::fs::DirBuilder::new().mode(0o700).create(dir).is_err() {
        return false;
    }
    let Ok(c) = CString::new(dir.as_os_str().as_encoded_bytes()) else { return false };
    // SAFETY: a NUL-terminated path; access only reads it.
    dir.is_dir() && unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) } == 0
}

/// Whether a socket path in `dir` fits `sun_path` (108 bytes with the NUL).
fn fits(dir: &Path) -> bool {
    dir.as_os_str().len() + "/kong_rds_iam.4294967295.sock".len() < 108
}

/// Removes wake sockets of processes that no longer exist.
fn sweep_stale(dir: &Path, own: u32) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix("kong_rds_iam.")?.strip_suffix(".sock")?.parse::<i32>().ok()) else {
            continue;
        };
        // SAFETY: signal 0 only checks whether the process exists.
        if pid as u32 != own && unsafe { libc::kill(pid, 0) } != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// What to remove when the process exits: (pid, socket, temporary directory).
static AT_EXIT: Mutex<Vec<(u32, PathBuf, Option<PathBuf>)>> = Mutex::new(Vec::new());

extern "C" fn remove_sockets() {
    // Never wait at exit: if the lock is taken, leave the file to the next sweep.
    let Ok(list) = AT_EXIT.try_lock() else { return };
    let pid = std::process::id();
    for (owner, path, dir) in list.iter() {
        if *owner == pid {
            let _ = std::fs::remove_file(path);
            if let Some(dir) = dir {
                let _ = std::fs::remove_dir(dir);
            }
        }
    }
}

fn remove_at_exit(pid: u32, path: &Path, temporary_dir: Option<&Path>) {
    let mut list = AT_EXIT.lock().unwrap_or_else(|p| p.into_inner());
    if list.is_empty() {
        // SAFETY: registers a plain function; the library is never unloaded
        // (the Lua binding pins it), so the pointer stays valid.
        unsafe {
            libc::atexit(remove_sockets);
        }
    }
    list.push((pid, path.to_owned(), temporary_dir.map(Path::to_owned)));
}

/// Runs `f` with every signal blocked on the calling thread, so a thread it
/// spawns starts with all of them blocked; the caller's mask is restored.
fn with_signals_blocked<T>(f: impl FnOnce() -> T) -> T {
    // SAFETY: sigset_t values are plain data initialized by sigfillset;
    // pthread_sigmask changes only the calling thread's mask.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old);
        let out = f();
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        out
    }
}

fn io_error(message: String) -> Error {
    Error::new(ErrorKind::Io, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_sockets_of_dead_processes_are_swept() {
        let dir = std::env::temp_dir().join(format!("kong_rds_iam-sweep-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // pid 0x7ffffffe does not exist; our own pid does.
        let dead = dir.join("kong_rds_iam.2147483646.sock");
        let alive = dir.join(format!("kong_rds_iam.{}.sock", std::process::id()));
        let other = dir.join("unrelated.sock");
        for p in [&dead, &alive, &other] {
            std::fs::write(p, b"").unwrap();
        }
        sweep_stale(&dir, 1);
        assert!(!dead.exists() && alive.exists() && other.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn long_prefixes_do_not_fit_a_socket_path() {
        assert!(fits(Path::new("/usr/local/kong/sockets")));
        assert!(!fits(&PathBuf::from(format!("/{}", "x".repeat(90)))));
    }
}
