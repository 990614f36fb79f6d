//! Host name resolution that never starts a thread where it must not.
//!
//! On the I/O thread a look-up must not block the other jobs, so it goes to
//! tokio's blocking pool (whose threads inherit the I/O thread's blocked
//! signals). Anywhere else the caller is blocking anyway (nginx init
//! phases, the CLI): the look-up runs inline, so that no thread is ever
//! started there, least of all in the nginx master before it forks.
//! Addresses are resolved for every new connection (no cache), so a
//! database endpoint that moved (an Aurora failover) is followed.

use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

use aws_smithy_runtime_api::client::dns::{DnsFuture, ResolveDns, ResolveDnsError};

use crate::io_thread;

/// The addresses of `host:port`, in the resolver's order.
pub async fn resolve(host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let addrs: Vec<SocketAddr> = if io_thread::is_current() {
        tokio::net::lookup_host((host, port)).await?.collect()
    } else {
        (host, port).to_socket_addrs()?.collect()
    };
    if addrs.is_empty() {
        return Err(io::Error::new(io::ErrorKind::NotFound, format!("{host} has no address")));
    }
    Ok(addrs)
}

/// The same rule for the AWS SDK's HTTP client (IMDS, ECS, STS, SSO).
#[derive(Debug, Clone, Copy, Default)]
pub struct Resolver;

impl ResolveDns for Resolver {
    fn resolve_dns<'a>(&'a self, name: &'a str) -> DnsFuture<'a> {
        DnsFuture::new(async move {
            let addrs = resolve(name, 0).await.map_err(ResolveDnsError::new)?;
            Ok(addrs.into_iter().map(|a| a.ip()).collect())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_addresses_resolve() {
        let addrs = crate::process::block_on(resolve("localhost", 5432)).unwrap().unwrap();
        assert!(addrs.iter().all(|a| a.port() == 5432 && a.ip().is_loopback()));
        let ip = crate::process::block_on(resolve("127.0.0.2", 1)).unwrap().unwrap();
        assert_eq!(ip, vec!["127.0.0.2:1".parse().unwrap()]);
    }
}
