//! A private network for the NATS nodes: one network namespace each, a
//! veth pair into a bridge the run makes, and addresses in a /24 nobody
//! else routes. Clients on the host reach every node over the bridge; a
//! partition adds blackhole routes between one node and its peers, so the
//! node still hears its clients but not the cluster. Everything is
//! removed when the `Net` is dropped.

use std::process::Stdio;

use anyhow::Context;
use tokio::process::Command;

pub struct Net {
    tag: String,
    /// 10.231.N: the third octet, free on this host when the run began.
    prefix: String,
    nodes: usize,
}

impl Net {
    /// Needs root (or CAP_NET_ADMIN) and iproute2's `ip netns`.
    pub async fn create(nodes: usize) -> anyhow::Result<Net> {
        let routes = output(Command::new("ip").args(["-4", "route"]))
            .await
            .context("reading the host's routes (`ip route`)")?;
        let pid = std::process::id();
        // Concurrent runs (other worktrees) pick different subnets.
        let octet = (0..200)
            .map(|n| 20 + (pid as usize + n) % 200)
            .find(|octet| !routes.contains(&format!("10.231.{octet}.")))
            .context("no free 10.231.N.0/24 on this host")?;
        let net = Net { tag: format!("{}", pid % 100_000), prefix: format!("10.231.{octet}"), nodes };
        net.build().await.context(
            "the partition needs network namespaces: run as root with iproute2 (`ip netns`, bridge, veth)",
        )?;
        Ok(net)
    }

    pub fn netns(&self, i: usize) -> String {
        format!("tally-ha-{}-n{i}", self.tag)
    }

    pub fn ip(&self, i: usize) -> String {
        format!("{}.{}", self.prefix, 11 + i)
    }

    fn bridge(&self) -> String {
        format!("thab{}", self.tag)
    }

    fn veth(&self, i: usize) -> String {
        format!("thav{}n{i}", self.tag)
    }

    async fn build(&self) -> anyhow::Result<()> {
        let bridge = self.bridge();
        ip(&["link", "add", &bridge, "type", "bridge"]).await?;
        ip(&["addr", "add", &format!("{}.1/24", self.prefix), "dev", &bridge]).await?;
        ip(&["link", "set", &bridge, "up"]).await?;
        for i in 0..self.nodes {
            let (netns, veth) = (self.netns(i), self.veth(i));
            ip(&["netns", "add", &netns]).await?;
            ip(&["link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &netns]).await?;
            ip(&["link", "set", &veth, "master", &bridge, "up"]).await?;
            let inside = ["netns", "exec", &netns, "ip"];
            ip(&[&inside[..], &["link", "set", "lo", "up"]].concat()).await?;
            ip(&[&inside[..], &["addr", "add", &format!("{}/24", self.ip(i)), "dev", "eth0"]].concat())
                .await?;
            ip(&[&inside[..], &["link", "set", "eth0", "up"]].concat()).await?;
        }
        Ok(())
    }

    /// Node `i` and every other node stop hearing each other (packets
    /// silently dropped, as on a broken switch); clients still reach all.
    pub async fn cut(&self, i: usize) -> anyhow::Result<()> {
        self.blackholes(i, "add").await
    }

    pub async fn heal(&self, i: usize) -> anyhow::Result<()> {
        self.blackholes(i, "del").await
    }

    async fn blackholes(&self, i: usize, verb: &str) -> anyhow::Result<()> {
        for peer in (0..self.nodes).filter(|&p| p != i) {
            for (from, to) in [(i, peer), (peer, i)] {
                let route = format!("{}/32", self.ip(to));
                ip(&["netns", "exec", &self.netns(from), "ip", "route", verb, "blackhole", &route]).await?;
            }
        }
        Ok(())
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Deleting a namespace deletes its veth end, and with it the pair.
        for i in 0..self.nodes {
            let _ = std::process::Command::new("ip").args(["netns", "del", &self.netns(i)]).status();
        }
        let _ = std::process::Command::new("ip").args(["link", "del", &self.bridge()]).status();
    }
}

async fn ip(args: &[&str]) -> anyhow::Result<()> {
    output(Command::new("ip").args(args)).await.map(|_| ())
}

async fn output(command: &mut Command) -> anyhow::Result<String> {
    let out = command.stdin(Stdio::null()).output().await.context("running ip (iproute2)")?;
    anyhow::ensure!(
        out.status.success(),
        "{:?}: {}",
        command.as_std(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
