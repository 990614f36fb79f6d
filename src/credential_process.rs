//! A profile's `credential_process`, run by us rather than by aws-config.
//!
//! aws-config runs the command with `tokio::process`, which installs a
//! SIGCHLD handler (not allowed in the nginx master) and leaves the process
//! running when the fetch times out: a hung command and its children outlive
//! `pg_timeout`. Here the command runs in a process group of its own, with
//! std's `Command` (no handler, no thread), its pipes read through tokio's
//! [`AsyncFd`] and its exit polled with `waitpid(WNOHANG)`, so the same future
//! runs on the I/O thread and inline in a blocking call. When the future is
//! dropped before the command exited (the caller's timeout, or the caller
//! went away), the whole group gets SIGKILL and the command is reaped.
//!
//! We take over only where the default chain would run that profile's
//! `credential_process` itself: no environment keys, and the selected
//! profile has `credential_process` and nothing that aws-config would prefer
//! to it or chain on top of it (`role_arn`, `credential_source`, web identity,
//! SSO, login session). Every other case stays aws-config's.
//!
//! What the command prints may be secret: errors carry its exit status, never
//! its output.

use std::ffi::OsString;
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use aws_credential_types::credential_feature::AwsCredentialFeature;
use aws_credential_types::provider::{self, error::CredentialsError, future, ProvideCredentials};
use aws_credential_types::Credentials;
use aws_types::os_shim_internal::Fs;
use tokio::io::unix::AsyncFd;

use crate::env_snapshot::Snapshot;

/// The most a credential process may print on stdout.
pub const MAX_OUTPUT: usize = 1 << 20;

/// How often the command's exit is checked, at most (it starts at 1 ms and
/// doubles up to this).
const POLL_EXIT_MAX: Duration = Duration::from_millis(25);

/// A profile's `credential_process` command, with the environment it runs in.
pub struct CredentialProcess {
    command: String,
    env: Vec<(String, String)>,
}

impl std::fmt::Debug for CredentialProcess {
    /// The command line may hold secrets: not shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialProcess").finish_non_exhaustive()
    }
}

/// The selected profile's `credential_process`, when the default chain
/// would reach it (see the module docs); `None` leaves the lookup to
/// aws-config, also when the profile files cannot be read.
pub async fn from_profile(snapshot: &Snapshot) -> Option<CredentialProcess> {
    if environment_keys_win(snapshot) {
        return None;
    }
    #[allow(deprecated)]
    let files = aws_config::profile::profile_file::ProfileFiles::default();
    let profiles = aws_config::profile::load(&Fs::real(), &snapshot.to_aws_env(), &files, None).await.ok()?;
    let command = selected_command(&profiles)?;
    Some(CredentialProcess::new(command.to_owned(), snapshot))
}

/// Whether the chain's first source, the environment keys, answers: both
/// `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` set and not blank.
fn environment_keys_win(snapshot: &Snapshot) -> bool {
    let set = |name| snapshot.var(name).is_some_and(|v| !v.trim().is_empty());
    set("AWS_ACCESS_KEY_ID") && set("AWS_SECRET_ACCESS_KEY")
}

/// Keys that make aws-config use something else than the profile's
/// `credential_process`, or put a role on top of it.
const PREFERRED_OR_CHAINED: &[&str] = &[
    "role_arn",
    "credential_source",
    "web_identity_token_file",
    "sso_session",
    "sso_start_url",
    "sso_region",
    "sso_account_id",
    "sso_role_name",
    "login_session",
];

/// The command aws-config would run for the selected profile, if it is the
/// profile's own `credential_process`.
fn selected_command(profiles: &aws_config::profile::ProfileSet) -> Option<&str> {
    let profile = profiles.get_profile(profiles.selected_profile())?;
    if PREFERRED_OR_CHAINED.iter().any(|k| profile.get(k).is_some()) {
        return None;
    }
    profile.get("credential_process").filter(|c| !c.trim().is_empty())
}

impl CredentialProcess {
    /// `command`, run by `sh -c` with the frozen environment `snapshot`
    /// (never the live one: nginx wipes its workers').
    pub fn new(command: String, snapshot: &Snapshot) -> Self {
        CredentialProcess { command, env: snapshot.vars().map(|(k, v)| (k.to_owned(), v.to_owned())).collect() }
    }

    /// Runs the command and reads its credentials. Dropping the future
    /// before it is done kills the command's process group.
    pub async fn run(&self) -> Result<Credentials, String> {
        reap_leftovers();
        let mut command = Command::new("/bin/sh");
        command
            .arg("-c")
            .arg(&self.command)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (OsString::from(k), OsString::from(v))))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = command.spawn().map_err(|e| format!("could not start credential_process: {}", e.kind()))?;
        // From here on, the group is killed unless the command was reaped.
        let mut group = Group { pid: child.id() as libc::pid_t, reaped: false };
        let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
            return Err("could not start credential_process: its pipes are missing".to_owned());
        };
        let stdout = Pipe::new(stdout.into())?;
        let stderr = Pipe::new(stderr.into())?;
        let mut output = Vec::new();
        let status = group.wait(&stdout, &stderr, &mut output).await?;
        match status {
            Some(status) if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) => Err(describe_failure(status)),
            // None: the status went to another reaper (nginx's master reaps
            // every child); the output decides.
            _ => parse_output(&output).map_err(|why| format!("credential_process printed no valid credentials json ({why})")),
        }
    }
}

impl ProvideCredentials for CredentialProcess {
    fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        future::ProvideCredentials::new(async move { self.run().await.map_err(CredentialsError::provider_error) as provider::Result })
    }
}

/// "exited with status 3" / "was killed by signal 9".
fn describe_failure(status: libc::c_int) -> String {
    if libc::WIFEXITED(status) {
        format!("credential_process exited with status {}", libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        format!("credential_process was killed by signal {}", libc::WTERMSIG(status))
    } else {
        "credential_process ended abnormally".to_owned()
    }
}

/// The running command: its process group (the command is the group leader).
struct Group {
    pid: libc::pid_t,
    reaped: bool,
}

impl Group {
    /// Reads both pipes (stdout into `output`, at most [`MAX_OUTPUT`];
    /// stderr is read and dropped, so that the command never blocks on it) until the command exits, then whatever it
    /// left in the pipes. The exit status, or `None` when another reaper
    /// took it.
    async fn wait(&mut self, stdout: &Pipe, stderr: &Pipe, output: &mut Vec<u8>) -> Result<Option<libc::c_int>, String> {
        let mut out_open = true;
        let mut err_open = true;
        let mut interval = Duration::from_millis(1);
        let mut tick = Box::pin(tokio::time::sleep(interval));
        std::future::poll_fn(|cx| {
            loop {
                if out_open {
                    out_open = stdout.poll_drain(cx, Some(&mut *output))?.is_pending();
                    if !out_open {
                        // stdout closed: the command is most likely ending.
                        interval = Duration::from_millis(1);
                        tick.as_mut().reset(tokio::time::Instant::now());
                    }
                }
                if err_open {
                    err_open = stderr.poll_drain(cx, None)?.is_pending();
                }
                match self.try_reap() {
                    Reaped::Exited(status) => return Poll::Ready(Ok(status)),
                    Reaped::Running => {}
                }
                if tick.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                interval = (interval * 2).min(POLL_EXIT_MAX);
                tick.as_mut().reset(tokio::time::Instant::now() + interval);
            }
        })
        .await
        .and_then(|status| {
            // Everything the command wrote before it exited is in the pipe now,
            // whether or not the readiness events came in yet.
            if out_open {
                stdout.drain_now(Some(output))?;
            }
            Ok(status)
        })
        .map_err(|e: PipeError| e.to_string())
    }

    fn try_reap(&mut self) -> Reaped {
        let mut status = 0;
        // SAFETY: waitpid on our own child's pid, with a valid status pointer.
        let r = unsafe { libc::waitpid(self.pid, &mut status, libc::WNOHANG) };
        match r {
            0 => Reaped::Running,
            r if r == self.pid => {
                self.reaped = true;
                Reaped::Exited(Some(status))
            }
            _ if io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) => Reaped::Running,
            _ => {
                // ECHILD: someone else reaped it. The pid may be reused from
                // now on, so the group is not ours to kill any more.
                self.reaped = true;
                Reaped::Exited(None)
            }
        }
    }
}

enum Reaped {
    Running,
    Exited(Option<libc::c_int>),
}

impl Drop for Group {
    /// Kills the group and reaps the command, unless it was reaped already.
    fn drop(&mut self) {
        if !self.reaped {
            // SAFETY: the group leader is our unreaped child (at worst a
            // zombie), so its pid, and with it the group id, is not reused.
            unsafe { libc::killpg(self.pid, libc::SIGKILL) };
            if !reap_killed(self.pid) {
                LEFTOVERS.lock().unwrap_or_else(|p| p.into_inner()).push(self.pid);
            }
        }
    }
}

/// Commands that were killed but had not ended yet when their future was
/// dropped: reaped at the next run, so that none stays a zombie.
static LEFTOVERS: Mutex<Vec<libc::pid_t>> = Mutex::new(Vec::new());

fn reap_leftovers() {
    let mut left = LEFTOVERS.lock().unwrap_or_else(|p| p.into_inner());
    left.retain(|&pid| {
        let mut status = 0;
        // SAFETY: waitpid on a child of ours that was killed, valid pointer.
        unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) == 0 }
    });
}

/// Waits up to 100 ms for a killed child to end, reaping it; true once reaped
/// (or gone).
fn reap_killed(pid: libc::pid_t) -> bool {
    for _ in 0..100 {
        let mut status = 0;
        // SAFETY: waitpid on our own child, valid pointer.
        match unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } {
            0 => std::thread::sleep(Duration::from_millis(1)),
            r if r < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) => {}
            _ => return true,
        }
    }
    false
}

/// The read end of one of the command's pipes, non-blocking, registered with
/// the runtime.
struct Pipe {
    fd: AsyncFd<OwnedFd>,
}

/// Why reading the command's output stopped.
enum PipeError {
    TooLong,
    Io(io::ErrorKind),
}

impl std::fmt::Display for PipeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PipeError::TooLong => write!(f, "credential_process printed more than {} MiB", MAX_OUTPUT >> 20),
            PipeError::Io(kind) => write!(f, "could not read the output of credential_process: {kind}"),
        }
    }
}

impl Pipe {
    fn new(fd: OwnedFd) -> Result<Pipe, String> {
        let setup = |e: io::Error| format!("could not read the output of credential_process: {}", e.kind());
        // SAFETY: fcntl on a descriptor we own.
        let ok = unsafe {
            let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
            flags >= 0 && libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) >= 0
        };
        if !ok {
            return Err(setup(io::Error::last_os_error()));
        }
        if tokio::runtime::Handle::try_current().is_err() {
            return Err("could not read the output of credential_process: no runtime".to_owned());
        }
        // SAFETY: the descriptor is owned by the AsyncFd from here on, open
        // until it is dropped, and `as_raw_fd` of an OwnedFd never changes.
        let fd = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) };
        Ok(Pipe { fd: fd.map_err(|e| setup(e.into()))? })
    }

    /// Reads what is there into `sink` (dropped when `None`; at most
    /// [`MAX_OUTPUT`] bytes kept): ready once the pipe is closed, pending
    /// while it is open. Reads a bounded amount per poll, so that a command
    /// that never stops writing cannot keep the caller's timeout from firing.
    fn poll_drain(&self, cx: &mut Context<'_>, mut sink: Option<&mut Vec<u8>>) -> Poll<Result<(), PipeError>> {
        for _ in 0..64 {
            let mut guard = match self.fd.poll_read_ready(cx) {
                Poll::Ready(Ok(guard)) => guard,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(PipeError::Io(e.kind()))),
                Poll::Pending => return Poll::Pending,
            };
            // try_io clears the readiness when the read would block.
            let read = guard.try_io(|fd| match read_some(fd.get_ref(), sink.as_deref_mut()) {
                Err(PipeError::Io(io::ErrorKind::WouldBlock)) => Err(io::Error::from(io::ErrorKind::WouldBlock)),
                other => Ok(other),
            });
            match read {
                Ok(Ok(Ok(Chunk::Eof))) => return Poll::Ready(Ok(())),
                Ok(Ok(Ok(Chunk::Read))) | Err(_) => {}
                Ok(Ok(Err(e))) => return Poll::Ready(Err(e)),
                Ok(Err(e)) => return Poll::Ready(Err(PipeError::Io(e.kind()))),
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Reads what is in the pipe now, without waiting for more.
    fn drain_now(&self, mut sink: Option<&mut Vec<u8>>) -> Result<(), PipeError> {
        loop {
            match read_some(self.fd.get_ref(), sink.as_deref_mut()) {
                Ok(Chunk::Read) => {}
                Ok(Chunk::Eof) => return Ok(()),
                Err(PipeError::Io(io::ErrorKind::WouldBlock)) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }
}

/// What one read did.
enum Chunk {
    Read,
    Eof,
}

/// One read into `sink` (or nowhere). More than [`MAX_OUTPUT`] bytes in
/// `sink` is [`PipeError::TooLong`].
fn read_some(fd: &OwnedFd, sink: Option<&mut Vec<u8>>) -> Result<Chunk, PipeError> {
    let mut chunk = [0u8; 16 * 1024];
    // SAFETY: reads into a buffer of the length given, from a descriptor we own.
    let n = unsafe { libc::read(fd.as_raw_fd(), chunk.as_mut_ptr().cast(), chunk.len()) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted { Ok(Chunk::Read) } else { Err(PipeError::Io(e.kind())) };
    }
    let n = n as usize;
    if n == 0 {
        return Ok(Chunk::Eof);
    }
    if let Some(sink) = sink {
        if sink.len() + n > MAX_OUTPUT {
            return Err(PipeError::TooLong);
        }
        sink.extend_from_slice(&chunk[..n]);
    }
    Ok(Chunk::Read)
}

/// The AWS CLI's credential_process document: `Version` 1, `AccessKeyId`,
/// `SecretAccessKey`, optional `SessionToken` and `Expiration` (RFC 3339).
/// Keys match case-insensitively, as aws-config reads them. The reason for
/// a failure names a field, never a value.
fn parse_output(output: &[u8]) -> Result<Credentials, &'static str> {
    let doc: serde_json::Value = serde_json::from_slice(output).map_err(|_| "not json")?;
    let object = doc.as_object().ok_or("not a json object")?;
    let field = |name: &str| object.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v);
    let string = |name: &'static str| match field(name) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s.as_str())),
        Some(_) => Err(name),
    };
    match field("Version").and_then(serde_json::Value::as_i64) {
        Some(1) => {}
        Some(_) => return Err("Version is not 1"),
        None => return Err("no Version"),
    }
    let access_key_id =
        string("AccessKeyId").map_err(|_| "AccessKeyId is not a string")?.filter(|s| !s.is_empty()).ok_or("no AccessKeyId")?;
    let secret =
        string("SecretAccessKey").map_err(|_| "SecretAccessKey is not a string")?.filter(|s| !s.is_empty()).ok_or("no SecretAccessKey")?;
    let session_token = string("SessionToken").map_err(|_| "SessionToken is not a string")?.filter(|s| !s.is_empty());
    let expiry = match string("Expiration").map_err(|_| "Expiration is not a string")? {
        None => None,
        Some(text) => Some(parse_expiration(text).ok_or("Expiration is not an RFC 3339 time")?),
    };
    let mut builder = Credentials::builder().access_key_id(access_key_id).secret_access_key(secret).provider_name("CredentialProcess");
    builder.set_session_token(session_token.map(str::to_owned));
    builder.set_expiry(expiry);
    let mut credentials = builder.build();
    let features = credentials.get_property_mut_or_default::<Vec<AwsCredentialFeature>>();
    features.push(AwsCredentialFeature::CredentialsProfileProcess);
    features.push(AwsCredentialFeature::CredentialsProcess);
    Ok(credentials)
}

fn parse_expiration(text: &str) -> Option<SystemTime> {
    let at = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    Some(SystemTime::from(at))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A new empty directory for one test's scripts.
    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("kong_rds_iam-cp-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn snapshot(pairs: &[(&str, &str)]) -> Snapshot {
        Snapshot::from_vars(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    fn process(command: &str) -> CredentialProcess {
        CredentialProcess::new(command.to_owned(), &snapshot(&[("AWS_TEST_AKID", "AKIDFROZEN")]))
    }

    fn run(p: &CredentialProcess, timeout: Duration) -> Option<Result<Credentials, String>> {
        crate::process::block_on_timeout(timeout, p.run()).unwrap()
    }

    /// Whether `pid` runs (a zombie does not: no reaper may be running here).
    fn alive(pid: i32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => false,
            Ok(stat) => !matches!(stat.rsplit(')').next().and_then(|r| r.split_whitespace().next()), Some("Z" | "X")),
        }
    }

    fn gone_within(pid: i32, limit: Duration) -> bool {
        let start = std::time::Instant::now();
        while alive(pid) {
            if start.elapsed() > limit {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }

    /// A script that starts `sleep 30 &`, writes its own and that pid, and sleeps.
    fn hanging_script(dir: &std::path::Path) -> String {
        let script = dir.join("hang.sh");
        let body = format!(
            "sleep 30 &\necho $! > {d}/grandchild.tmp && mv {d}/grandchild.tmp {d}/grandchild\necho $$ > {d}/child.tmp && mv {d}/child.tmp {d}/child\nsleep 30\n",
            d = dir.display()
        );
        std::fs::write(&script, body).unwrap();
        format!("/bin/sh {}", script.display())
    }

    fn pid_in(dir: &std::path::Path, name: &str) -> Option<i32> {
        std::fs::read_to_string(dir.join(name)).ok()?.trim().parse().ok()
    }

    #[test]
    fn reads_the_json_a_script_prints_with_the_frozen_environment() {
        let p = process(
            r#"printf '{"Version": 1, "AccessKeyId": "%s%s", "SecretAccessKey": "S3CRET", "SessionToken": "TOK", "Expiration": "2999-01-02T03:04:05Z"}' "$AWS_TEST_AKID" "$CARGO_MANIFEST_DIR""#,
        );
        let c = run(&p, Duration::from_secs(10)).unwrap().unwrap();
        // CARGO_MANIFEST_DIR is in the live environment, not in the snapshot.
        assert_eq!(c.access_key_id(), "AKIDFROZEN");
        assert_eq!(c.secret_access_key(), "S3CRET");
        assert_eq!(c.session_token(), Some("TOK"));
        let expiry = c.expiry().unwrap().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
        assert_eq!(expiry, 32472241445);
        let features = c.get_property::<Vec<AwsCredentialFeature>>().unwrap();
        assert!(features.contains(&AwsCredentialFeature::CredentialsProcess));
    }

    #[test]
    fn a_failure_keeps_the_exit_status_and_never_the_output() {
        let p = process("echo SECRET-ON-STDERR >&2; echo '{\"SecretAccessKey\": \"SECRET-ON-STDOUT\"}'; exit 3");
        let e = run(&p, Duration::from_secs(10)).unwrap().unwrap_err();
        assert_eq!(e, "credential_process exited with status 3");
        let p = process("echo '{\"Version\": 1, \"AccessKeyId\": \"A\", \"SecretAccessKey\": \"SECRET-ON-STDOUT\"'");
        let e = run(&p, Duration::from_secs(10)).unwrap().unwrap_err();
        assert_eq!(e, "credential_process printed no valid credentials json (not json)");
        let p = process("kill -9 $$");
        assert_eq!(run(&p, Duration::from_secs(10)).unwrap().unwrap_err(), "credential_process was killed by signal 9");
    }

    #[test]
    fn a_timeout_kills_the_command_and_its_children() {
        let dir = scratch("timeout");
        let p = process(&hanging_script(&dir));
        let started = std::time::Instant::now();
        assert!(run(&p, Duration::from_millis(700)).is_none(), "the command should have timed out");
        assert!(started.elapsed() < Duration::from_secs(5));
        let child = pid_in(&dir, "child").expect("the script wrote its pid");
        let grandchild = pid_in(&dir, "grandchild").expect("the script wrote its child's pid");
        assert!(gone_within(child, Duration::from_secs(1)), "the command {child} outlived its timeout");
        assert!(gone_within(grandchild, Duration::from_secs(1)), "its child {grandchild} outlived the timeout");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn dropping_the_future_on_another_runtime_kills_the_group() {
        let dir = scratch("drop");
        let command = hanging_script(&dir);
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let task = rt.spawn(async move { process(&command).run().await });
        let (child, grandchild) = rt.block_on(async {
            loop {
                if let (Some(c), Some(g)) = (pid_in(&dir, "child"), pid_in(&dir, "grandchild")) {
                    break (c, g);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        assert!(alive(child) && alive(grandchild));
        task.abort();
        assert!(rt.block_on(task).unwrap_err().is_cancelled());
        assert!(gone_within(child, Duration::from_secs(1)), "the command {child} outlived its future");
        assert!(gone_within(grandchild, Duration::from_secs(1)), "its child {grandchild} outlived the future");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn output_is_capped_at_one_mib() {
        let dir = scratch("cap");
        let p = process(&format!("echo $$ > {}/child; head -c 3000000 /dev/zero; sleep 30", dir.display()));
        let e = run(&p, Duration::from_secs(10)).unwrap().unwrap_err();
        assert_eq!(e, "credential_process printed more than 1 MiB");
        assert!(gone_within(pid_in(&dir, "child").unwrap(), Duration::from_secs(1)));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_command_that_exits_early_but_leaves_a_writer_behind_is_done_at_its_exit() {
        // The background job keeps stdout open: waiting for end of file would hang.
        let p = process(r#"(sleep 5 &) ; echo '{"Version": 1, "AccessKeyId": "A", "SecretAccessKey": "B"}'"#);
        let started = std::time::Instant::now();
        let c = run(&p, Duration::from_secs(4)).expect("done before the background job").unwrap();
        assert_eq!(c.access_key_id(), "A");
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn parses_the_cli_document() {
        let ok = |doc: &str| parse_output(doc.as_bytes());
        let c = ok(r#"{"version": 1, "accesskeyid": "A", "secretaccesskey": "B", "SessionToken": null}"#).unwrap();
        assert_eq!((c.access_key_id(), c.secret_access_key(), c.session_token(), c.expiry()), ("A", "B", None, None));
        let offset =
            ok(r#"{"Version": 1, "AccessKeyId": "A", "SecretAccessKey": "B", "Expiration": "2030-01-01T01:00:00+01:00"}"#).unwrap();
        assert_eq!(offset.expiry().unwrap().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs(), 1893456000);
        for (doc, why) in [
            ("", "not json"),
            ("[1]", "not a json object"),
            (r#"{"AccessKeyId": "A", "SecretAccessKey": "B"}"#, "no Version"),
            (r#"{"Version": 2, "AccessKeyId": "A", "SecretAccessKey": "B"}"#, "Version is not 1"),
            (r#"{"Version": 1, "SecretAccessKey": "B"}"#, "no AccessKeyId"),
            (r#"{"Version": 1, "AccessKeyId": "A"}"#, "no SecretAccessKey"),
            (r#"{"Version": 1, "AccessKeyId": "A", "SecretAccessKey": 7}"#, "SecretAccessKey is not a string"),
            (
                r#"{"Version": 1, "AccessKeyId": "A", "SecretAccessKey": "B", "Expiration": "tomorrow"}"#,
                "Expiration is not an RFC 3339 time",
            ),
        ] {
            assert_eq!(ok(doc).unwrap_err(), why, "{doc}");
        }
    }

    fn selected(config: &str, vars: &[(&str, &str)]) -> Option<String> {
        let dir = scratch(&format!("profile-{}", hex::encode(&config.as_bytes()[..config.len().min(12)])));
        let path = dir.join("config");
        std::fs::write(&path, config).unwrap();
        let mut all = vec![("AWS_CONFIG_FILE", path.to_str().unwrap()), ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials")];
        all.extend_from_slice(vars);
        let found = crate::process::block_on(from_profile(&snapshot(&all))).unwrap().map(|p| p.command);
        let _ = std::fs::remove_dir_all(&dir);
        found
    }

    #[test]
    fn takes_over_only_where_the_chain_runs_the_profiles_credential_process() {
        let plain = "[default]\ncredential_process = /bin/creds --x\n";
        assert_eq!(selected(plain, &[]).as_deref(), Some("/bin/creds --x"));
        // Environment keys come first in the chain.
        assert_eq!(selected(plain, &[("AWS_ACCESS_KEY_ID", "A"), ("AWS_SECRET_ACCESS_KEY", "S")]), None);
        // Without the secret, the environment source is not configured.
        assert_eq!(selected(plain, &[("AWS_ACCESS_KEY_ID", "A")]).as_deref(), Some("/bin/creds --x"));
        let two = "[default]\naws_access_key_id = A\naws_secret_access_key = S\n[profile cp]\ncredential_process = /bin/cp\n";
        assert_eq!(selected(two, &[]), None);
        assert_eq!(selected(two, &[("AWS_PROFILE", "cp")]).as_deref(), Some("/bin/cp"));
        assert_eq!(selected(two, &[("AWS_PROFILE", "missing")]), None);
        // A role on top, or a source aws-config prefers: aws-config's.
        let role = "[default]\ncredential_process = /bin/cp\nrole_arn = arn:aws:iam::1:role/r\nsource_profile = default\n";
        assert_eq!(selected(role, &[]), None);
        let sso = "[default]\ncredential_process = /bin/cp\nsso_session = s\n";
        assert_eq!(selected(sso, &[]), None);
        // Static keys in the same profile lose to credential_process, as in aws-config.
        let both = "[default]\naws_access_key_id = A\naws_secret_access_key = S\ncredential_process = /bin/cp\n";
        assert_eq!(selected(both, &[]).as_deref(), Some("/bin/cp"));
    }

    #[test]
    fn debug_shows_no_command() {
        let p = process("/bin/creds --password hunter2");
        assert!(!format!("{p:?}").contains("hunter2"));
    }
}
