//! AWS RDS IAM database authentication for OpenResty and Kong.
pub mod clock;
pub mod conf;
pub mod connection;
pub mod credential_process;
pub mod credentials;
pub mod env_snapshot;
pub mod error;
// The binding's C-ABI half lives with the binding (src/lua/) but builds
// without a Lua feature, so that its unit tests run under `cargo test`.
#[path = "lua/ffi.rs"]
pub mod ffi;
pub mod io_thread;
pub mod jobs;
#[cfg(any(feature = "luajit", feature = "lua51", feature = "lua54"))]
mod lua;
pub mod net;
pub mod pg;
pub mod pool;
pub mod process;
pub mod rate;
pub mod region;
pub mod service_tokens;
pub mod signer;
pub mod stats;
pub mod tls;
pub mod token;
pub mod warn;
