//! Token-signing loops without Lua, for bench/run.
//!
//! `token_bench ROUNDS ITERS` prints one line per variant:
//! `name ns_per_op_round1 ns_per_op_round2 ...` (wall clock) and
//! `name_cpu ...` (process CPU time per op).
//! Variants:
//!   rust_sigv4        aws_sigv4::http_request::sign (QueryParams, 900 s, rds-db)
//!                     + the token string assembled from its params (the floor)
//!   rust_sigv4_http   same, applied with SigningInstructions::apply_to_request_http1x
//!   rust_signer_fresh kong_rds_iam::signer::sign (derives the signing key each time)
//!   rust_signer       kong_rds_iam::signer::Signer::sign (day's signing key cached)
use std::hint::black_box;
use std::time::{Duration, Instant, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SignatureLocation, SigningInstructions, SigningSettings};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use kong_rds_iam::signer::{self, Signer, SigningParams};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

const HOST: &str = "bench-db.abc123.us-east-1.rds.amazonaws.com";
const PORT: u16 = 5432;
const USER: &str = "iam_user";
const REGION: &str = "us-east-1";
const AKID: &str = "AKIDBENCHEXAMPLE";
const SECRET: &str = "benchSecretKeyExample0123456789abcdefghij";
const STRICT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

fn settings() -> SigningSettings {
    let mut s = SigningSettings::default();
    s.signature_location = SignatureLocation::QueryParams;
    s.expires_in = Some(Duration::from_secs(900));
    s
}

/// The request URL and aws-sigv4's presign instructions for it: the work every
/// aws-sigv4 token costs, whatever assembles the token afterwards.
fn presign_instructions(identity: &Identity, settings: &SigningSettings, time: SystemTime) -> (String, SigningInstructions) {
    let params = v4::SigningParams::builder()
        .identity(identity)
        .region(REGION)
        .name("rds-db")
        .time(time)
        .settings(settings.clone())
        .build()
        .unwrap()
        .into();
    let url = format!("https://{HOST}:{PORT}/?Action=connect&DBUser={}", utf8_percent_encode(USER, STRICT));
    let req = SignableRequest::new("GET", url.as_str(), std::iter::empty(), SignableBody::Bytes(&[])).unwrap();
    let (instructions, _sig) = sign(req, &params).unwrap().into_parts();
    (url, instructions)
}

/// aws-sigv4 presign, token assembled by hand (what an SDK's auth-token helper does).
fn sigv4_token(identity: &Identity, settings: &SigningSettings, time: SystemTime) -> String {
    let (url, instructions) = presign_instructions(identity, settings, time);
    let mut token = String::with_capacity(url.len() + 400);
    token.push_str(&url["https://".len()..]);
    for (name, value) in instructions.params() {
        token.push('&');
        token.push_str(name);
        token.push('=');
        token.extend(utf8_percent_encode(value, STRICT));
    }
    token
}

/// The same through `apply_to_request_http1x`.
fn sigv4_http_token(identity: &Identity, settings: &SigningSettings, time: SystemTime) -> String {
    let (url, instructions) = presign_instructions(identity, settings, time);
    let mut http_req = http::Request::builder().uri(url.as_str()).body(()).unwrap();
    instructions.apply_to_request_http1x(&mut http_req);
    http_req.uri().to_string()["https://".len()..].to_owned()
}

fn ours(time: SystemTime) -> SigningParams<'static> {
    SigningParams {
        kind: kong_rds_iam::signer::Kind::Rds,
        host: HOST,
        port: PORT,
        user: USER,
        region: REGION,
        access_key_id: AKID,
        secret_access_key: SECRET,
        session_token: None,
        time,
    }
}

/// Process CPU time (all threads), in nanoseconds.
fn cpu_ns() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec into `ts`.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 * 1e9 + ts.tv_nsec as f64
}

fn rounds(name: &str, n_rounds: usize, iters: usize, mut f: impl FnMut() -> usize) {
    // warm-up
    for _ in 0..iters / 10 + 1 {
        black_box(f());
    }
    let mut out = Vec::with_capacity(n_rounds);
    let mut cpu = Vec::with_capacity(n_rounds);
    for _ in 0..n_rounds {
        let (t0, c0) = (Instant::now(), cpu_ns());
        let mut sink = 0usize;
        for _ in 0..iters {
            sink = sink.wrapping_add(f());
        }
        black_box(sink);
        out.push(t0.elapsed().as_nanos() as f64 / iters as f64);
        cpu.push((cpu_ns() - c0) / iters as f64);
    }
    let fmt = |v: &[f64]| v.iter().map(|v| format!("{v:.1}")).collect::<Vec<_>>().join(" ");
    println!("{name} {}", fmt(&out));
    println!("{name}_cpu {}", fmt(&cpu));
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n_rounds: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(5);
    let iters: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(20_000);
    let only: Option<&str> = args.get(3).map(|s| s.as_str());

    let identity: Identity = Credentials::new(AKID, SECRET, None, None, "bench").into();
    let settings = settings();

    // Same inputs, same token: the loops compare like with like.
    let t = SystemTime::now();
    let a = sigv4_token(&identity, &settings, t);
    let b = sigv4_http_token(&identity, &settings, t);
    let c = signer::sign(&ours(t));
    let d = Signer::new().sign(&ours(t));
    let same = a == b && b == c && c == d;
    println!("check_identical {}", if same { 1 } else { 0 });
    if !same {
        eprintln!("token_bench: tokens differ:\n{a}\n{b}\n{c}\n{d}");
    }

    let want = |n: &str| only.map_or(true, |o| o.split(',').any(|x| x == n));
    if want("rust_sigv4") {
        rounds("rust_sigv4", n_rounds, iters, || sigv4_token(&identity, &settings, SystemTime::now()).len());
    }
    if want("rust_sigv4_http") {
        rounds("rust_sigv4_http", n_rounds, iters, || sigv4_http_token(&identity, &settings, SystemTime::now()).len());
    }
    if want("rust_signer_fresh") {
        rounds("rust_signer_fresh", n_rounds, iters, || signer::sign(&ours(SystemTime::now())).len());
    }
    if want("rust_signer") {
        let s = Signer::new();
        rounds("rust_signer", n_rounds, iters, || s.sign(&ours(SystemTime::now())).len());
    }
}
