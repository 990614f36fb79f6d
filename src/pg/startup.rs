//! Opening a connection: TCP, optional TLS (PostgreSQL's SSLRequest), the
//! startup message, authentication (the methods `pg_require_auth` allows;
//! SCRAM with channel binding when the server offers it over TLS), and
//! waiting for ReadyForQuery.

use std::io;
use std::net::SocketAddr;

use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::{md5_hash, sasl};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::pipe::PipeIo;
use super::stream::{MessageStream, Socket, Transport};
use super::{channel_binding, require_auth, server_error, CancelToken, Connection, Session};
use crate::conf::{AuthMethod, ConnectConf};
use crate::error::{Error, ErrorKind, Result};
use crate::{net, tls};

/// Connects and authenticates with `password` (an IAM token or the
/// configured password). The caller bounds the whole call with `pg_timeout`.
pub async fn connect(conf: &ConnectConf, password: Option<&str>) -> Result<Connection> {
    let host = conf.address.host.as_str();
    let port = conf.address.port;
    let could_not = |e: &io::Error| Error::new(ErrorKind::Io, format!("could not connect to {host}:{port}: {}", io_text(e)));
    let addrs = net::resolve(host, port).await.map_err(|e| could_not(&e))?;
    let tcp = TcpStream::connect(&addrs[..]).await.map_err(|e| could_not(&e))?;
    let _ = tcp.set_nodelay(true);
    let addr = tcp.peer_addr().map_err(|e| could_not(&e))?;
    establish(tcp, addr, conf, password).await
}

/// [`connect`] over a cosocket already connected to `addr`: the startup
/// exchange goes through `pipe` (Lua sends and receives its bytes). The
/// caller polls the future each time the pipe got bytes, and bounds it.
pub async fn connect_piped(pipe: PipeIo, addr: SocketAddr, conf: &ConnectConf, password: Option<&str>) -> Result<Connection> {
    establish(pipe, addr, conf, password).await
}

/// TLS, startup and authentication over a connected socket.
async fn establish<S: Socket>(socket: S, addr: SocketAddr, conf: &ConnectConf, password: Option<&str>) -> Result<Connection> {
    let transport = if conf.tls.enabled { negotiate_tls(socket, conf).await? } else { socket.plain() };
    let binding = transport.peer_certificate().and_then(|c| channel_binding::tls_server_end_point(c));
    let mut stream = MessageStream::new(transport);
    let mut buf = BytesMut::with_capacity(1024);

    let mut params: Vec<(&str, &str)> = vec![
        ("user", conf.endpoint.user.as_str()),
        ("database", conf.database.as_str()),
        ("client_encoding", "UTF8"),
        ("application_name", conf.application_name.as_str()),
    ];
    let search_path = conf.schema.as_deref().map(quote_identifier);
    if let Some(path) = &search_path {
        params.push(("search_path", path));
    }
    frontend::startup_message(params, &mut buf).map_err(protocol)?;
    stream.send(&mut buf).await.map_err(|e| io_error("sending the startup message", &e))?;

    authenticate(&mut stream, &mut buf, conf, password, binding).await?;

    let mut server_version = String::new();
    let mut parameters: Vec<(String, String)> = Vec::new();
    let mut cancel = CancelToken { addr, process_id: 0, secret_key: 0 };
    let status;
    loop {
        match stream.recv().await.map_err(|e| io_error("starting the session", &e))? {
            Message::ReadyForQuery(ready) => {
                status = ready.status();
                break;
            }
            Message::ParameterStatus(p) => {
                if p.name().ok() == Some("server_version") {
                    server_version = p.value().unwrap_or_default().to_owned();
                }
                parameters.push((p.name().unwrap_or_default().to_owned(), p.value().unwrap_or_default().to_owned()));
            }
            Message::BackendKeyData(k) => {
                cancel.process_id = k.process_id();
                cancel.secret_key = k.secret_key();
            }
            Message::ErrorResponse(body) => return Err(server_error::from_body(&body)),
            Message::NoticeResponse(_) => {}
            _ => return Err(Error::new(ErrorKind::Protocol, "unexpected message while starting the session")),
        }
    }
    let mut conn = Connection::new(Session {
        stream,
        buf,
        server_version,
        cancel,
        status,
        messages: Default::default(),
        // Until the server says otherwise: what the startup message asked for.
        client_encoding: "UTF8".into(),
        encoding: super::escape::Encoding::from_name("UTF8"),
        standard_conforming_strings: true,
        last_columns: None,
    });
    for (name, value) in &parameters {
        conn.parameter(name, value);
    }
    Ok(conn)
}

/// SSLRequest; on 'S' a TLS handshake, on 'N' plain text unless TLS is required.
async fn negotiate_tls<S: Socket>(mut tcp: S, conf: &ConnectConf) -> Result<Transport> {
    let mut buf = BytesMut::with_capacity(8);
    frontend::ssl_request(&mut buf);
    tcp.write_all(&buf).await.map_err(|e| io_error("requesting tls", &e))?;
    let answer = tcp.read_u8().await.map_err(|e| io_error("requesting tls", &e))?;
    match answer {
        b'S' => {
            if conf.auth.is_iam() && !conf.tls.verify {
                crate::warn::once(
                    "iam_unverified",
                    format!(
                        "pg_iam_auth_ssl_verify is off: iam tokens (bearer credentials) go to {} without checking its certificate",
                        conf.address
                    ),
                );
            }
            let config = tls::client_config(&conf.tls)?;
            let name = tls::server_name(&conf.endpoint.host)?;
            let stream = TlsConnector::from(config).connect(name, tcp).await.map_err(|e| {
                Error::new(ErrorKind::Tls, format!("tls handshake failed: {}", tls::handshake_text(&e, &conf.endpoint.host)))
            })?;
            Ok(S::tls(stream))
        }
        b'N' if conf.tls.required => Err(Error::new(
            ErrorKind::Tls,
            if conf.auth.is_iam() {
                "the server does not support tls, which iam authentication requires"
            } else {
                "the server does not support tls, but pg_ssl_required is on"
            },
        )),
        b'N' => {
            crate::warn::once(
                "plaintext_fallback",
                format!(
                    "the server {} does not support tls: the session goes on in plain text (pg_ssl is on, pg_ssl_required is off; warned once per process)",
                    conf.address
                ),
            );
            Ok(tcp.plain())
        }
        _ => Err(Error::new(ErrorKind::Protocol, "unexpected answer to the tls request")),
    }
}

/// Answers the server's authentication requests that `pg_require_auth`
/// allows, with `password`; SCRAM binds to the server certificate
/// (`binding`, its tls-server-end-point hash) when the server offers
/// SCRAM-SHA-256-PLUS.
async fn authenticate(
    stream: &mut MessageStream,
    buf: &mut BytesMut,
    conf: &ConnectConf,
    password: Option<&str>,
    binding: Option<Vec<u8>>,
) -> Result<()> {
    let user = conf.endpoint.user.as_str();
    let iam = conf.auth.is_iam();
    let tls = stream.is_tls();
    let allowed = |asked: AuthMethod| require_auth::decide(&conf.require_auth, tls, asked).map_err(|m| Error::new(ErrorKind::Auth, m));
    let need_password = || {
        password.ok_or_else(|| {
            Error::new(ErrorKind::Auth, format!("the server asks for a password for user {user:?} but pg_password is not set"))
        })
    };
    let mut asked = false;
    let mut binding = binding;
    loop {
        match stream.recv().await.map_err(|e| io_error("authenticating", &e))? {
            Message::AuthenticationOk => {
                if !asked {
                    allowed(AuthMethod::None)?;
                }
                return Ok(());
            }
            Message::AuthenticationCleartextPassword => {
                asked = true;
                allowed(AuthMethod::Password)?;
                frontend::password_message(need_password()?.as_bytes(), buf).map_err(protocol)?;
                stream.send(buf).await.map_err(|e| io_error("authenticating", &e))?;
            }
            Message::AuthenticationMd5Password(body) => {
                asked = true;
                allowed(AuthMethod::Md5)?;
                let hash = md5_hash(user.as_bytes(), need_password()?.as_bytes(), body.salt());
                frontend::password_message(hash.as_bytes(), buf).map_err(protocol)?;
                stream.send(buf).await.map_err(|e| io_error("authenticating", &e))?;
            }
            Message::AuthenticationSasl(body) => {
                asked = true;
                allowed(AuthMethod::ScramSha256)?;
                let (mut scram, mut plus) = (false, false);
                let mut mechanisms = body.mechanisms();
                while let Some(m) = mechanisms.next().map_err(protocol)? {
                    scram |= m == sasl::SCRAM_SHA_256;
                    plus |= m == sasl::SCRAM_SHA_256_PLUS;
                }
                let (mechanism, channel_binding) =
                    match (plus, binding.take(), scram) {
                        (true, Some(hash), _) => (sasl::SCRAM_SHA_256_PLUS, sasl::ChannelBinding::tls_server_end_point(hash)),
                        // Over TLS without PLUS on offer: say we could bind ("y"), so
                        // that a server that does offer it sees the downgrade.
                        (false, _, true) if tls => (sasl::SCRAM_SHA_256, sasl::ChannelBinding::unrequested()),
                        (_, _, true) => (sasl::SCRAM_SHA_256, sasl::ChannelBinding::unsupported()),
                        (true, None, false) => return Err(Error::new(
                            ErrorKind::Auth,
                            "the server offers only scram-sha-256-plus, and its certificate gives no channel binding this client supports",
                        )),
                        (false, _, false) => {
                            return Err(Error::new(ErrorKind::Auth, "the server offers no supported sasl mechanism (scram-sha-256)"))
                        }
                    };
                let bound = mechanism == sasl::SCRAM_SHA_256_PLUS;
                scram_exchange(stream, buf, need_password()?, mechanism, channel_binding).await?;
                if bound {
                    crate::stats::bump(&crate::stats::SCRAM_CHANNEL_BOUND);
                }
            }
            Message::ErrorResponse(body) => {
                let e = server_error::from_body(&body);
                return Err(if iam { with_iam_hint(e) } else { e });
            }
            Message::NoticeResponse(_) => {}
            _ => return Err(Error::new(ErrorKind::Auth, "the server asks for an unsupported authentication method")),
        }
    }
}

async fn scram_exchange(
    stream: &mut MessageStream,
    buf: &mut BytesMut,
    password: &str,
    mechanism: &str,
    channel_binding: sasl::ChannelBinding,
) -> Result<()> {
    let mut scram = sasl::ScramSha256::new(password.as_bytes(), channel_binding);
    frontend::sasl_initial_response(mechanism, scram.message(), buf).map_err(protocol)?;
    stream.send(buf).await.map_err(|e| io_error("authenticating", &e))?;
    match stream.recv().await.map_err(|e| io_error("authenticating", &e))? {
        Message::AuthenticationSaslContinue(body) => scram.update(body.data()).map_err(|e| auth_error(&e))?,
        Message::ErrorResponse(body) => return Err(server_error::from_body(&body)),
        _ => return Err(Error::new(ErrorKind::Protocol, "unexpected message during scram authentication")),
    }
    frontend::sasl_response(scram.message(), buf).map_err(protocol)?;
    stream.send(buf).await.map_err(|e| io_error("authenticating", &e))?;
    match stream.recv().await.map_err(|e| io_error("authenticating", &e))? {
        Message::AuthenticationSaslFinal(body) => scram.finish(body.data()).map_err(|e| auth_error(&e)),
        Message::ErrorResponse(body) => Err(server_error::from_body(&body)),
        _ => Err(Error::new(ErrorKind::Protocol, "unexpected message during scram authentication")),
    }
}

/// RDS answers a bad token with a bare PAM failure; say what usually causes it.
fn with_iam_hint(e: Error) -> Error {
    if !e.is_auth() {
        return e;
    }
    let clock = match crate::clock::offset() {
        Some((offset, source)) if offset.unsigned_abs() > crate::clock::CORRECTED_OVER.as_secs() => {
            format!(
                "; this host's clock is {} s {} aws's ({source}), corrected for",
                offset.unsigned_abs(),
                if offset > 0 { "behind" } else { "ahead of" }
            )
        }
        _ => String::new(),
    };
    let message = format!(
        "{} (iam: check the user has rds_iam, the role's rds-db:connect policy, the region, and that the clock is right{clock})",
        e.message()
    );
    Error::db(message, e.sqlstate().unwrap_or_default()).with_kind(ErrorKind::Auth)
}

/// Double-quotes an identifier for the `search_path` startup parameter.
fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn io_text(e: &io::Error) -> String {
    let text = e.to_string();
    match text.chars().next() {
        Some(c) if c.is_uppercase() => c.to_lowercase().chain(text.chars().skip(1)).collect(),
        _ => text,
    }
}

fn io_error(doing: &str, e: &io::Error) -> Error {
    let cause = io::Error::new(e.kind(), e.to_string());
    Error::new(ErrorKind::Io, format!("connection failed while {doing}: {}", io_text(e))).with_source(cause)
}

fn auth_error(e: &io::Error) -> Error {
    Error::new(ErrorKind::Auth, format!("scram authentication failed: {}", io_text(e)))
}

fn protocol(e: io::Error) -> Error {
    Error::new(ErrorKind::Protocol, format!("protocol error: {}", io_text(&e)))
}
