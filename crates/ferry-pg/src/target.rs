//! Where ferry ships to: parsing a PostgreSQL target with libpq's conventions, TLS, and
//! connecting with a bounded wait for a server that is still starting.
//!
//! Parsing order (libpq's): the URL or `key=value` string first; then for anything it left
//! unset, the environment (`PGHOST`, `PGPORT`, `PGUSER`, `PGPASSWORD`, `PGDATABASE`,
//! `PGSSLMODE`, `PGSSLROOTCERT`, `PGPASSFILE`); the password last from `password_file`
//! (a ferry option: a file holding only the password), then `PGPASSWORD`, then `~/.pgpass`
//! (or `PGPASSFILE`) matched on host, port, database and user. Options tokio-postgres does
//! not know (`sslmode=verify-ca|verify-full`, `sslrootcert`, `password_file`, `passfile`)
//! are taken out of the string before the driver parses the rest.
//!
//! TLS follows `sslmode`: `disable` never, `prefer` tries TLS and falls back, `require`
//! encrypts without checking the certificate (as libpq does without a root certificate),
//! `verify-ca` checks the chain against `sslrootcert`, `verify-full` also checks the host
//! name. The password is a [`Secret`]; the target prints as `user@host:port/db`.
//!
//! Connecting fails fast on a rejected password (28P01, 28000) and a missing database
//! (3D000), and retries with exponential backoff, up to `connect_wait`, while the server
//! refuses connections or says it is starting (57P03).

use crate::error::{PgError, is_transient_pg};
use crate::secret::Secret;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_postgres::config::{Host, SslMode as DriverSslMode};
use tokio_postgres::{Client, Config, NoTls};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(s: &str) -> Option<SslMode> {
        Some(match s {
            "disable" => SslMode::Disable,
            "allow" | "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }
}

/// A parsed PostgreSQL target. Cheap to clone; prints without its password.
#[derive(Clone)]
pub struct PgTarget {
    config: Config,
    password: Option<Secret>,
    ssl_mode: SslMode,
    ssl_root_cert: Option<PathBuf>,
    /// How long to wait for a server that refuses connections or is starting.
    pub connect_wait: Duration,
    description: String,
}

impl std::fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgTarget")
            .field("target", &self.description)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("ssl_mode", &self.ssl_mode)
            .finish()
    }
}

impl std::fmt::Display for PgTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.description)
    }
}

/// The environment a target is parsed in (a seam so tests need not mutate the process
/// environment).
#[derive(Clone, Debug, Default)]
pub struct TargetEnv {
    pub vars: std::collections::HashMap<String, String>,
    pub home: Option<PathBuf>,
}

impl TargetEnv {
    pub fn from_process() -> TargetEnv {
        TargetEnv {
            vars: std::env::vars()
                .filter(|(k, _)| k.starts_with("PG") || k == "USER")
                .collect(),
            home: std::env::var_os("HOME").map(PathBuf::from),
        }
    }

    fn get(&self, k: &str) -> Option<&str> {
        self.vars
            .get(k)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }
}

/// Splits a `key=value` connection string into pairs (values may be single-quoted, with
/// backslash escapes).
fn split_key_values(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') {
            return Err(format!("expected '=' after {key:?}"));
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'\'') {
            chars.next();
            loop {
                match chars.next() {
                    Some('\\') => value.push(chars.next().ok_or("unterminated escape")?),
                    Some('\'') => break,
                    Some(c) => value.push(c),
                    None => return Err(format!("unterminated quoted value for {key:?}")),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                if c == '\\' {
                    chars.next();
                    if let Some(n) = chars.next() {
                        value.push(n);
                    }
                    continue;
                }
                value.push(c);
                chars.next();
            }
        }
        out.push((key, value));
    }
    Ok(out)
}

fn quote_kv(v: &str) -> String {
    let mut s = String::from("'");
    for c in v.chars() {
        if c == '\'' || c == '\\' {
            s.push('\\');
        }
        s.push(c);
    }
    s.push('\'');
    s
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 3 <= b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Options ferry handles itself, taken out of the connection string.
#[derive(Default)]
struct ExtraOptions {
    sslmode: Option<String>,
    sslrootcert: Option<String>,
    password_file: Option<String>,
    passfile: Option<String>,
}

fn take_extra(key: &str, value: &str, extra: &mut ExtraOptions) -> bool {
    match key {
        "sslmode" => extra.sslmode = Some(value.to_string()),
        "sslrootcert" => extra.sslrootcert = Some(value.to_string()),
        "password_file" => extra.password_file = Some(value.to_string()),
        "passfile" => extra.passfile = Some(value.to_string()),
        _ => return false,
    }
    true
}

impl PgTarget {
    /// Parses a `postgres://` / `postgresql://` URL or a libpq `key=value` string, filling
    /// the gaps from the process environment and `~/.pgpass`.
    pub fn parse(target: &str) -> Result<PgTarget, PgError> {
        PgTarget::parse_with_env(target, &TargetEnv::from_process())
    }

    pub fn parse_with_env(target: &str, env: &TargetEnv) -> Result<PgTarget, PgError> {
        let invalid = |reason: String| PgError::InvalidTarget {
            target: redact_target(target),
            reason,
        };
        let mut extra = ExtraOptions::default();
        let driver_string =
            if target.starts_with("postgres://") || target.starts_with("postgresql://") {
                match target.split_once('?') {
                    Some((base, query)) => {
                        let kept: Vec<&str> = query
                            .split('&')
                            .filter(|kv| {
                                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                                !take_extra(k, &percent_decode(v), &mut extra)
                            })
                            .collect();
                        if kept.is_empty() {
                            base.to_string()
                        } else {
                            format!("{base}?{}", kept.join("&"))
                        }
                    }
                    None => target.to_string(),
                }
            } else {
                let pairs = split_key_values(target).map_err(invalid)?;
                pairs
                    .into_iter()
                    .filter(|(k, v)| !take_extra(k, v, &mut extra))
                    .map(|(k, v)| format!("{k}={}", quote_kv(&v)))
                    .collect::<Vec<_>>()
                    .join(" ")
            };
        let mut config: Config = if driver_string.trim().is_empty() {
            Config::new()
        } else {
            driver_string
                .parse()
                .map_err(|e: tokio_postgres::Error| invalid(e.to_string()))?
        };

        if config.get_hosts().is_empty() {
            let host = env.get("PGHOST").unwrap_or("localhost").to_string();
            for h in host.split(',') {
                config.host(h);
            }
        }
        if config.get_ports().is_empty()
            && let Some(p) = env.get("PGPORT")
        {
            let port: u16 = p
                .parse()
                .map_err(|_| invalid(format!("PGPORT={p:?} is not a port number")))?;
            config.port(port);
        }
        if config.get_user().is_none() {
            let user = env
                .get("PGUSER")
                .or_else(|| env.get("USER"))
                .unwrap_or("postgres")
                .to_string();
            config.user(&user);
        }
        if config.get_dbname().is_none() {
            let db = env
                .get("PGDATABASE")
                .map(str::to_string)
                .or_else(|| config.get_user().map(str::to_string))
                .unwrap_or_else(|| "postgres".into());
            config.dbname(&db);
        }
        let ssl_mode_text = extra
            .sslmode
            .clone()
            .or_else(|| env.get("PGSSLMODE").map(str::to_string))
            .unwrap_or_else(|| "prefer".into());
        let ssl_mode = SslMode::parse(&ssl_mode_text).ok_or_else(|| {
            invalid(format!(
                "sslmode {ssl_mode_text:?} is not one of disable, allow, prefer, require, verify-ca, verify-full"
            ))
        })?;
        let ssl_root_cert = extra
            .sslrootcert
            .clone()
            .or_else(|| env.get("PGSSLROOTCERT").map(str::to_string))
            .map(PathBuf::from)
            .or_else(|| {
                let p = env.home.as_ref()?.join(".postgresql/root.crt");
                p.exists().then_some(p)
            });
        config.ssl_mode(match ssl_mode {
            SslMode::Disable => DriverSslMode::Disable,
            SslMode::Prefer => DriverSslMode::Prefer,
            _ => DriverSslMode::Require,
        });

        let mut target_out = PgTarget {
            description: String::new(),
            config,
            password: None,
            ssl_mode,
            ssl_root_cert,
            connect_wait: Duration::from_secs(60),
        };
        // Password: the string's own, then password_file, PGPASSWORD, pgpass.
        if let Some(pw) = target_out.config.get_password() {
            target_out.password = Some(Secret::new(String::from_utf8_lossy(pw).into_owned()));
        } else if let Some(path) = &extra.password_file {
            let text = std::fs::read_to_string(path).map_err(|source| PgError::PasswordFile {
                path: path.clone(),
                source,
            })?;
            let pw = text.trim_end_matches(['\n', '\r']).to_string();
            target_out.password = Some(Secret::new(pw));
        } else if let Some(pw) = env.get("PGPASSWORD") {
            target_out.password = Some(Secret::new(pw));
        } else {
            let passfile = extra
                .passfile
                .clone()
                .map(PathBuf::from)
                .or_else(|| env.get("PGPASSFILE").map(PathBuf::from))
                .or_else(|| env.home.as_ref().map(|h| h.join(".pgpass")));
            if let Some(path) = passfile {
                target_out.password = target_out.lookup_pgpass(&path);
            }
        }
        if let Some(pw) = &target_out.password {
            target_out.config.password(pw.expose());
        }
        target_out.description = target_out.describe();
        Ok(target_out)
    }

    fn host_names(&self) -> Vec<String> {
        self.config
            .get_hosts()
            .iter()
            .map(|h| match h {
                Host::Tcp(s) => s.clone(),
                Host::Unix(p) => p.display().to_string(),
            })
            .collect()
    }

    fn port(&self) -> u16 {
        self.config.get_ports().first().copied().unwrap_or(5432)
    }

    pub fn user(&self) -> &str {
        self.config.get_user().unwrap_or("")
    }

    pub fn database(&self) -> &str {
        self.config.get_dbname().unwrap_or("")
    }

    pub fn ssl_mode(&self) -> SslMode {
        self.ssl_mode
    }

    pub fn has_password(&self) -> bool {
        self.password.is_some()
    }

    fn describe(&self) -> String {
        format!(
            "{}@{}:{}/{}",
            self.user(),
            self.host_names().join(","),
            self.port(),
            self.database()
        )
    }

    /// `hostname:port:database:username:password`, `*` matching anything, first match wins.
    fn lookup_pgpass(&self, path: &std::path::Path) -> Option<Secret> {
        let text = std::fs::read_to_string(path).ok()?;
        let host = self.host_names().first().cloned().unwrap_or_default();
        let port = self.port().to_string();
        let fields_match = |pat: &str, v: &str| pat == "*" || pat == v;
        for line in text.lines() {
            if line.trim_start().starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let mut fields = Vec::new();
            let mut cur = String::new();
            let mut chars = line.chars();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(n) = chars.next() {
                            cur.push(n);
                        }
                    }
                    ':' if fields.len() < 4 => fields.push(std::mem::take(&mut cur)),
                    c => cur.push(c),
                }
            }
            fields.push(cur);
            if fields.len() != 5 {
                continue;
            }
            let host_ok = fields_match(&fields[0], &host)
                || (fields[0] == "localhost" && host.starts_with('/'));
            if host_ok
                && fields_match(&fields[1], &port)
                && fields_match(&fields[2], self.database())
                && fields_match(&fields[3], self.user())
            {
                return Some(Secret::new(fields[4].clone()));
            }
        }
        None
    }

    /// The same target with another database name (for tests and tools).
    pub fn with_database(&self, db: &str) -> PgTarget {
        let mut t = self.clone();
        t.config.dbname(db);
        t.description = t.describe();
        t
    }

    /// Sets `application_name`, which ferry uses to find its own sessions.
    pub fn set_application_name(&mut self, name: &str) {
        self.config.application_name(name);
    }

    /// Connects once, classifying failures: a rejected password or a missing database is
    /// returned at once; other failures come back as `Postgres` errors.
    pub async fn connect_once(&self) -> Result<Client, PgError> {
        let res = match self.ssl_mode {
            SslMode::Disable => self.config.connect(NoTls).await.map(|(c, conn)| {
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                c
            }),
            _ => {
                let tls = self.make_tls()?;
                self.config.connect(tls).await.map(|(c, conn)| {
                    tokio::spawn(async move {
                        let _ = conn.await;
                    });
                    c
                })
            }
        };
        res.map_err(|e| self.classify_connect_error(e))
    }

    fn classify_connect_error(&self, e: tokio_postgres::Error) -> PgError {
        match e.code().map(|c| c.code().to_string()).as_deref() {
            Some("28P01") | Some("28000") => PgError::AuthFailed {
                target: self.description.clone(),
                user: self.user().to_string(),
                source: e,
            },
            Some("3D000") => PgError::DatabaseMissing {
                target: self.description.clone(),
                database: self.database().to_string(),
                source: e,
            },
            _ => PgError::pg(format!("connecting to {}", self.description), e),
        }
    }

    /// Connects, waiting with exponential backoff (up to `connect_wait`) while the server
    /// refuses connections or is starting up.
    pub async fn connect(&self) -> Result<Client, PgError> {
        let start = Instant::now();
        let mut delay = Duration::from_millis(50);
        loop {
            match self.connect_once().await {
                Ok(c) => return Ok(c),
                Err(PgError::Postgres { source, context }) => {
                    if !is_transient_pg(&source) {
                        return Err(PgError::Postgres { context, source });
                    }
                    if start.elapsed() >= self.connect_wait {
                        return Err(PgError::Unreachable {
                            target: self.description.clone(),
                            waited_secs: start.elapsed().as_secs(),
                            source,
                        });
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
                Err(other) => return Err(other),
            }
        }
    }

    fn make_tls(&self) -> Result<tokio_postgres_rustls::MakeRustlsConnect, PgError> {
        let tls_err = |reason: String| PgError::Tls {
            target: self.description.clone(),
            reason,
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_err(e.to_string()))?;
        let mut roots = rustls::RootCertStore::empty();
        if let Some(path) = &self.ssl_root_cert {
            let pem = std::fs::read(path)
                .map_err(|e| tls_err(format!("reading sslrootcert {}: {e}", path.display())))?;
            for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                let cert = cert.map_err(|e| {
                    tls_err(format!("sslrootcert {} is not PEM: {e}", path.display()))
                })?;
                roots
                    .add(cert)
                    .map_err(|e| tls_err(format!("sslrootcert {}: {e}", path.display())))?;
            }
        }
        let config = match self.ssl_mode {
            SslMode::VerifyFull => {
                if roots.is_empty() {
                    return Err(tls_err(
                        "sslmode=verify-full needs a root certificate: set sslrootcert or PGSSLROOTCERT (or ~/.postgresql/root.crt)".into(),
                    ));
                }
                builder.with_root_certificates(roots).with_no_client_auth()
            }
            SslMode::VerifyCa => {
                if roots.is_empty() {
                    return Err(tls_err(
                        "sslmode=verify-ca needs a root certificate: set sslrootcert or PGSSLROOTCERT (or ~/.postgresql/root.crt)".into(),
                    ));
                }
                let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .map_err(|e| tls_err(e.to_string()))?;
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(tls_verify::ChainOnly { inner }))
                    .with_no_client_auth()
            }
            _ => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(tls_verify::EncryptOnly { provider }))
                .with_no_client_auth(),
        };
        Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
    }
}

/// A connection string with any password replaced, for messages.
pub fn redact_target(s: &str) -> String {
    if let Some((scheme, rest)) = s.split_once("://") {
        if let Some((auth, host)) = rest.split_once('@') {
            let user = auth.split(':').next().unwrap_or("");
            return format!(
                "{scheme}://{user}@{}",
                host.split('?').next().unwrap_or(host)
            );
        }
        return format!("{scheme}://{}", rest.split('?').next().unwrap_or(rest));
    }
    match split_key_values(s) {
        Ok(pairs) => pairs
            .into_iter()
            .map(|(k, v)| {
                if k == "password" {
                    format!("{k}=***")
                } else {
                    format!("{k}={v}")
                }
            })
            .collect::<Vec<_>>()
            .join(" "),
        Err(_) => "(unparsable connection string)".into(),
    }
}

/// Certificate verifiers for the libpq modes that do not check everything.
mod tls_verify {
    use rustls::DigitallySignedStruct;
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use std::sync::Arc;

    /// `sslmode=require`/`prefer`: encrypt, but accept any certificate (libpq's behaviour
    /// when no root certificate is configured). Signatures are still checked.
    #[derive(Debug)]
    pub struct EncryptOnly {
        pub provider: Arc<rustls::crypto::CryptoProvider>,
    }

    impl ServerCertVerifier for EncryptOnly {
        fn verify_server_cert(
            &self,
            _end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _server_name: &ServerName<'_>,
            _ocsp: &[u8],
            _now: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.provider
                .signature_verification_algorithms
                .supported_schemes()
        }
    }

    /// `sslmode=verify-ca`: the chain must lead to the root certificate; the host name is
    /// not checked.
    #[derive(Debug)]
    pub struct ChainOnly {
        pub inner: Arc<rustls::client::WebPkiServerVerifier>,
    }

    impl ServerCertVerifier for ChainOnly {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            intermediates: &[CertificateDer<'_>],
            server_name: &ServerName<'_>,
            ocsp: &[u8],
            now: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            match self
                .inner
                .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
            {
                Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::NotValidForName,
                ))
                | Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::NotValidForNameContext { .. },
                )) => Ok(ServerCertVerified::assertion()),
                other => other,
            }
        }
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.inner.verify_tls12_signature(message, cert, dss)
        }
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.inner.verify_tls13_signature(message, cert, dss)
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.inner.supported_verify_schemes()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> TargetEnv {
        TargetEnv {
            vars: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            home: None,
        }
    }

    #[test]
    fn url_with_ferry_options_and_env_defaults() {
        let t = PgTarget::parse_with_env(
            "postgresql://app@db.example:6543/prod?sslmode=verify-full&sslrootcert=/tmp/ca.pem&application_name=x",
            &env(&[("PGPASSWORD", "s3cret")]),
        )
        .unwrap();
        assert_eq!(t.user(), "app");
        assert_eq!(t.database(), "prod");
        assert_eq!(t.ssl_mode(), SslMode::VerifyFull);
        assert!(t.has_password());
        assert_eq!(t.to_string(), "app@db.example:6543/prod");
        assert!(!format!("{t:?}").contains("s3cret"));
    }

    #[test]
    fn key_value_string_and_environment() {
        let t = PgTarget::parse_with_env(
            "host=h1 user='a b' sslmode=disable",
            &env(&[("PGPORT", "7000"), ("PGDATABASE", "d")]),
        )
        .unwrap();
        assert_eq!(t.user(), "a b");
        assert_eq!(t.database(), "d");
        assert_eq!(t.to_string(), "a b@h1:7000/d");
        assert!(!t.has_password());
        let e = PgTarget::parse_with_env("host=h sslmode=sometimes", &env(&[])).unwrap_err();
        assert!(e.to_string().contains("sslmode"), "{e}");
    }

    #[test]
    fn password_from_file_and_pgpass_never_printed() {
        let dir = tempfile::tempdir().unwrap();
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, "filepw\n").unwrap();
        let t = PgTarget::parse_with_env(
            &format!("postgres://u@h/db?password_file={}", pwfile.display()),
            &env(&[]),
        )
        .unwrap();
        assert_eq!(t.password.as_ref().unwrap().expose(), "filepw");

        let pgpass = dir.path().join(".pgpass");
        std::fs::write(
            &pgpass,
            "# comment\nother:*:*:*:no\nh:5432:db:u:pass\\:word\n",
        )
        .unwrap();
        let mut e = env(&[]);
        e.home = Some(dir.path().to_path_buf());
        let t = PgTarget::parse_with_env("postgres://u@h/db", &e).unwrap();
        assert_eq!(t.password.as_ref().unwrap().expose(), "pass:word");
        assert!(!format!("{t:?} {t}").contains("pass:word"));

        let missing =
            PgTarget::parse_with_env("postgres://u@h/db?password_file=/nonexistent/pw", &env(&[]))
                .unwrap_err();
        assert!(missing.to_string().contains("/nonexistent/pw"), "{missing}");
    }

    #[test]
    fn redaction() {
        assert_eq!(
            redact_target("postgres://u:secret@h:5/db?sslmode=require"),
            "postgres://u@h:5/db"
        );
        assert!(!redact_target("host=h password=secret").contains("secret"));
    }
}
