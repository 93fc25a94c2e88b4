//! The database servers the suite needs (DESIGN.md, "Services"), each
//! checked once per run: a test that needs one that does not answer fails
//! at its start with one line that names it and says how to start it,
//! never with a panic deep inside the test, and never by skipping.

use sqlx::Connection;
use std::time::Duration;
use tokio::sync::OnceCell;

pub const POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
pub const MYSQL_URL: &str = "mysql://root@127.0.0.1:3306/test";

/// PostgreSQL, with trust auth.
pub static POSTGRES: Service = Service {
    name: "PostgreSQL",
    url: POSTGRES_URL,
    start: "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
    checked: OnceCell::const_new(),
};

/// MariaDB, whose root has no password.
pub static MARIADB: Service = Service {
    name: "MariaDB",
    url: MYSQL_URL,
    start: "start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd \
            (as root, add -- --user=mysql)",
    checked: OnceCell::const_new(),
};

/// How long the check waits for an answer (a firewall drops, it does not
/// refuse).
const ANSWER_WITHIN: Duration = Duration::from_secs(5);

/// A database server that every development and CI machine runs.
pub struct Service {
    /// What a developer calls it.
    name: &'static str,
    /// What the tests connect to: the check logs in as they do.
    url: &'static str,
    /// How to start it by hand, where `.ci/run` is not what one wants.
    start: &'static str,
    /// The outcome of the first check, which every later test reuses.
    checked: OnceCell<Result<(), String>>,
}

impl Service {
    /// Returns once the service has answered in this run; otherwise panics
    /// with the line of [`Service::missing`].
    pub async fn require(&self) {
        if let Err(line) = self.checked.get_or_init(|| self.check()).await {
            panic!("{line}");
        }
    }

    /// Logs in and out once, as the tests will.
    async fn check(&self) -> Result<(), String> {
        sqlx::any::install_default_drivers();
        match tokio::time::timeout(ANSWER_WITHIN, sqlx::AnyConnection::connect(self.url)).await {
            Ok(Ok(connection)) => {
                let _ = connection.close().await;
                Ok(())
            }
            Ok(Err(e)) => Err(self.missing(&e.to_string())),
            Err(_) => Err(self.missing(&format!("no answer within {ANSWER_WITHIN:?}"))),
        }
    }

    /// The one line a test fails with when the service did not answer
    /// (`cause` says how), e.g. `PostgreSQL is not reachable at
    /// 127.0.0.1:5432 (user postgres, database test): … Start it with
    /// .ci/run, or: pg_ctlcluster …`.
    fn missing(&self, cause: &str) -> String {
        let (user, rest) = self
            .url
            .split_once("://")
            .and_then(|(_, rest)| rest.split_once('@'))
            .unwrap_or_else(|| panic!("no user in {}", self.url));
        let (address, database) = rest.split_once('/').unwrap_or((rest, ""));
        let cause = cause.replace('\n', " ");
        format!(
            "{} is not reachable at {address} (user {user}, database {database}): {cause}. \
             Start it with .ci/run, or: {}",
            self.name, self.start
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `service` as if it listened on a port nothing listens on, and that port.
    fn on_a_closed_port(service: &Service) -> (Service, u16) {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let (head, database) = service.url.rsplit_once('/').unwrap();
        let (host, _) = head.rsplit_once(':').unwrap();
        let url = format!("{host}:{port}/{database}");
        let service = Service {
            url: Box::leak(url.into_boxed_str()),
            checked: OnceCell::new(),
            ..*service
        };
        (service, port)
    }

    #[tokio::test]
    async fn a_service_that_is_down_is_named_with_how_to_start_it() {
        let cases = [
            (
                &POSTGRES,
                "PostgreSQL is not reachable at 127.0.0.1:{port} (user postgres, database test): ",
                ". Start it with .ci/run, or: \
                 pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
            ),
            (
                &MARIADB,
                "MariaDB is not reachable at 127.0.0.1:{port} (user root, database test): ",
                ". Start it with .ci/run, or: start-stop-daemon --start --oknodo --background \
                 --exec /usr/sbin/mariadbd (as root, add -- --user=mysql)",
            ),
        ];
        for (service, head, tail) in cases {
            let (service, port) = on_a_closed_port(service);
            let head = head.replace("{port}", &port.to_string());
            let line = service.check().await.unwrap_err();
            let cause = line
                .strip_prefix(&head)
                .and_then(|rest| rest.strip_suffix(tail))
                .unwrap_or_else(|| panic!("{line:?}"));
            assert!(cause.contains("Connection refused"), "{line}");
            assert!(!line.contains('\n'), "{line:?}");
        }
    }

    #[tokio::test]
    #[should_panic(expected = "PostgreSQL is not reachable at 127.0.0.1:")]
    async fn a_test_that_needs_a_service_that_is_down_fails_with_that_line() {
        on_a_closed_port(&POSTGRES).0.require().await;
    }
}
