//! A NATS URL as the client takes it: the address apart from the
//! credentials, which go in the options.

use crate::bus::Error;
use async_nats::{ConnectOptions, ServerAddr};
use std::time::Duration;

/// URL userinfo as written, `%`-escapes decoded.
fn unescape(text: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16);
    let mut out = Vec::with_capacity(text.len());
    let mut rest = text.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        if let (b'%', [high, low, more @ ..]) = (b, tail) {
            if let (Some(high), Some(low)) = (hex(*high), hex(*low)) {
                out.push((high * 16 + low) as u8);
                rest = more;
                continue;
            }
        }
        out.push(b);
        rest = tail;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The server of `url` and how to connect to it: `user:password@` or a
/// bare `token@`, TLS for `tls://`. The client does not read credentials
/// from the URL itself, and would log them with the address.
pub(super) fn options(
    url: &str,
    connect: Duration,
    request: Duration,
) -> Result<(ServerAddr, ConnectOptions), Error> {
    let bad = |problem: String| Error::Url {
        url: crate::bus::redact(url),
        problem,
    };
    let addr: ServerAddr = url
        .parse()
        .map_err(|err: std::io::Error| bad(err.to_string()))?;
    if addr.host().is_empty() {
        return Err(bad("no host".to_owned()));
    }
    let tls = addr.tls_required();
    let mut bare = addr.into_inner();
    let user = unescape(bare.username());
    let password = bare.password().map(unescape);
    bare.set_password(None).ok();
    bare.set_username("").ok();
    let addr = ServerAddr::from_url(bare).map_err(|err| bad(err.to_string()))?;
    let options = ConnectOptions::new()
        .name("rowcast")
        .connection_timeout(connect)
        .request_timeout(Some(request))
        .require_tls(tls);
    let options = match (user.is_empty(), password) {
        (false, Some(password)) => options.user_and_password(user, password),
        (false, None) => options.token(user),
        (true, _) => options,
    };
    Ok((addr, options))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_never_show() {
        assert_eq!(
            crate::bus::redact("nats://s3cret@host:4222"),
            "nats://***@host:4222"
        );
        assert_eq!(crate::bus::redact("nats://u:p@host"), "nats://u:***@host");
        assert_eq!(crate::bus::redact("tls://host:4222"), "tls://host:4222");
        assert_eq!(unescape("p%40ss%2fw%zz"), "p@ss/w%zz");
    }

    #[test]
    fn credentials_leave_the_address() {
        let (addr, _) =
            options("nats://u:p%40ss@host:4333", Duration::ZERO, Duration::ZERO).expect("a URL");
        assert_eq!(addr.as_url_str(), "nats://host:4333");
        let (addr, _) = options("tls://t0k@host", Duration::ZERO, Duration::ZERO).expect("a URL");
        assert!(addr.tls_required() && addr.username().is_none());
        let err = options("nats://u:s3cret@[::1", Duration::ZERO, Duration::ZERO).unwrap_err();
        assert!(!err.to_string().contains("s3cret"), "{err}");
    }
}
