//! Cutting a connection on the loopback without a word, with `iptables`.

/// Rules that drop every packet between two ports on the loopback, both
/// ways, removed when dropped: to either side the other has vanished,
/// with no FIN or reset.
pub struct Blackhole {
    rules: Vec<Vec<String>>,
}

impl Blackhole {
    pub fn cut(port: u16, peer_port: u16) -> Blackhole {
        let rules: Vec<Vec<String>> = [(port, peer_port), (peer_port, port)]
            .iter()
            .map(|(from, to)| {
                [
                    "INPUT",
                    "-i",
                    "lo",
                    "-p",
                    "tcp",
                    "--sport",
                    &from.to_string(),
                    "--dport",
                    &to.to_string(),
                    "-j",
                    "DROP",
                ]
                .map(str::to_owned)
                .to_vec()
            })
            .collect();
        for rule in &rules {
            iptables("-I", rule);
        }
        Blackhole { rules }
    }
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        for rule in &self.rules {
            iptables("-D", rule);
        }
    }
}

fn iptables(action: &str, rule: &[String]) {
    let status = std::process::Command::new("iptables")
        .arg(action)
        .args(rule)
        .status()
        .expect("iptables runs (Debian package iptables; `.ci/run` installs it)");
    assert!(status.success(), "iptables {action} {rule:?}");
}
