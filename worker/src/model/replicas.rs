//! The replicas of one `openai` model: the servers its calls are spread over, and which of them
//! gets the next attempt.
//!
//! A model's `url` may name several servers, or (with `replicas_from_dns`) a DNS name whose
//! every address is a server, as a Kubernetes headless Service resolves to its ready pods; the
//! name is re-resolved every `dns_refresh_s`. Each attempt goes to the replica with the fewest
//! attempts outstanding, ties taken in turn. Not round-robin over connections: calls differ in
//! length many times over, and a load balancer in front (a ClusterIP Service) pins a keep-alive
//! or HTTP/2 connection, and so every call on it, to one pod.
//!
//! A replica that refuses a connection is ejected at once; one that fails [`STREAK`] attempts
//! in a row (a 5xx, a timeout, a cut-off reply) is ejected too. [`FIRST_EJECTION`] later it gets
//! one attempt, its probe: a reply brings it back, a failure ejects it again for twice as long,
//! up to [`MAX_EJECTION`]. While every replica is ejected an attempt fails at once as
//! unreachable, which the client layer retries and the worker then answers with a pause, as it
//! does for a single server that is down. A model with one URL and no DNS replicas is never
//! ejected: what its server does is what the caller sees, as before replicas existed.
//!
//! A replica found by DNS is reached by name, not by its address: its own HTTP client resolves
//! the name to that one address (reqwest's `resolve`), so the Host header, the TLS server name
//! and the certificate check are the name's, for `http://` and `https://` alike, and every
//! address gets a connection pool of its own.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use cai_common::telemetry::metrics::{ReplicaCallLabels, ReplicaLabels, metrics};
use futures::future::BoxFuture;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use tokio::time::Instant;

use super::ModelError;
use super::openai::redact;

/// Failed attempts in a row (5xx, timeouts, cut-off replies) that eject a replica.
pub const STREAK: u32 = 3;
/// How long a replica is first ejected for; each failed probe doubles it.
pub const FIRST_EJECTION: Duration = Duration::from_secs(2);
/// The longest ejection.
pub const MAX_EJECTION: Duration = Duration::from_secs(60);
/// How long one DNS lookup may take before the replicas it would refresh are kept as they are.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where one replica is: its base URL and, for a replica found by DNS, the address its host name
/// is resolved to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The base URL, e.g. `http://vllm:8000/v1`, secrets included.
    pub base: String,
    /// The address the URL's host stands for (DNS replicas only).
    pub pinned: Option<SocketAddr>,
}

impl Target {
    /// The base URL without secrets, the pinned address in place of the host name: the
    /// replica's `replica` label and its name in messages.
    pub fn shown(&self) -> String {
        match (self.pinned, reqwest::Url::parse(&self.base)) {
            (Some(address), Ok(mut url)) => {
                // Fails only for URLs that cannot have a host, which `Replicas::new` refused.
                let _ = url.set_ip_host(address.ip());
                redact(url.as_str())
            }
            _ => redact(&self.base),
        }
    }

    /// The host name a pinned replica's client must resolve to its address, with that address;
    /// `None` when the URL's host is already an address or nothing is pinned.
    pub fn pinned_name(&self) -> Option<(String, SocketAddr)> {
        let address = self.pinned?;
        let url = reqwest::Url::parse(&self.base).ok()?;
        Some((url.domain()?.to_owned(), address))
    }
}

/// How an attempt on a replica went, as far as the replica's health goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// The replica answered: any reply short of a 5xx (a 400 or a 429 comes from a live server).
    Answered,
    /// A 5xx, a timeout or a cut-off reply: [`STREAK`] in a row eject the replica.
    Failed,
    /// No connection could be made: the replica is ejected at once.
    Refused,
}

impl Health {
    /// The `outcome` label of `cai_replica_calls_total`.
    fn label(self) -> &'static str {
        match self {
            Health::Answered => "answered",
            Health::Failed => "failed",
            Health::Refused => "refused",
        }
    }
}

/// Looks up a `host:port`: [`system_resolver`], or one a test injects.
pub type Resolver =
    Arc<dyn Fn(String) -> BoxFuture<'static, io::Result<Vec<SocketAddr>>> + Send + Sync>;

/// Builds the client one replica is called with.
pub type Connect<C> = Box<dyn Fn(&Target) -> Result<C, String> + Send + Sync>;

/// The system's resolver, through `tokio::net::lookup_host`.
pub fn system_resolver() -> Resolver {
    Arc::new(|authority| {
        Box::pin(async move { Ok(tokio::net::lookup_host(authority).await?.collect()) })
    })
}

/// How a model's replicas are found.
pub enum Discovery {
    /// Each URL is one replica.
    Urls,
    /// Every address each URL's host resolves to is a replica; looked up again every `refresh`.
    Dns {
        /// How often the names are looked up again.
        refresh: Duration,
        /// Who looks them up.
        resolver: Resolver,
    },
}

/// The replicas of one model and their health; [`Replicas::pick`] leases one per attempt.
pub struct Replicas<C> {
    /// The job's name for the model (messages, metrics).
    model: String,
    /// The base URLs, as the job gives them.
    urls: Vec<String>,
    connect: Connect<C>,
    /// Set when the replicas come from DNS.
    dns: Option<Dns>,
    /// Whether failures eject replicas (not for a single URL).
    ejects: bool,
    set: Mutex<Set<C>>,
}

/// The DNS side of [`Replicas`].
struct Dns {
    refresh: Duration,
    resolver: Resolver,
    /// `host:port` of each URL, in the order of [`Replicas::urls`].
    authorities: Vec<String>,
    /// Held by the one caller looking the names up.
    resolving: tokio::sync::Mutex<()>,
}

/// The replicas as they are now.
struct Set<C> {
    replicas: Vec<Replica<C>>,
    /// The id the next replica gets.
    next_id: u64,
    /// Rotates where the search for the fewest outstanding starts, so ties are taken in turn.
    turn: usize,
    /// When the names were last looked up (DNS only).
    resolved_at: Option<Instant>,
    /// Lookups finished so far (DNS only): a caller that waited for another's lookup uses it.
    lookups: u64,
}

/// One replica.
struct Replica<C> {
    /// Stable while the replica is in the set; a lease finds its replica by it.
    id: u64,
    /// Which of [`Replicas::urls`] it came from.
    url: usize,
    target: Target,
    shown: String,
    client: C,
    /// Attempts leased and not yet settled or dropped.
    outstanding: usize,
    /// Failed attempts in a row.
    failures: u32,
    ejected: Option<Ejection>,
    series: Series,
}

/// Until when a replica is out, and for how long it was put out.
#[derive(Clone, Copy, Debug)]
struct Ejection {
    until: Instant,
    length: Duration,
}

/// A replica's metric series, resolved once.
struct Series {
    /// Indexed like [`Health`]: answered, failed, refused.
    calls: [Counter; 3],
    latency: Histogram,
    ejections: Counter,
}

impl Series {
    fn new(model: &str, replica: &str) -> Self {
        let metrics = metrics();
        let labels = ReplicaLabels {
            model: model.to_owned(),
            replica: replica.to_owned(),
        };
        let calls = [Health::Answered, Health::Failed, Health::Refused].map(|health| {
            metrics
                .replica_calls
                .get_or_create(&ReplicaCallLabels {
                    model: model.to_owned(),
                    replica: replica.to_owned(),
                    outcome: health.label(),
                })
                .clone()
        });
        Self {
            calls,
            latency: metrics.replica_latency.get_or_create(&labels).clone(),
            ejections: metrics.replica_ejections.get_or_create(&labels).clone(),
        }
    }

    fn record(&self, health: Health, latency: Duration) {
        self.calls[health as usize].inc();
        if health != Health::Refused {
            self.latency.observe(latency.as_secs_f64());
        }
    }
}

impl<C> Replica<C> {
    /// Whether an attempt may go here now: a live replica always, an ejected one once its time
    /// is up and only for one attempt at a time (its probe).
    fn available(&self, now: Instant) -> bool {
        self.ejected
            .is_none_or(|ejection| now >= ejection.until && self.outstanding == 0)
    }
}

impl<C: Clone> Replicas<C> {
    /// The replicas of model `model` at `urls` (at least one, each `http://` or `https://`),
    /// each called with the client `connect` builds for it. With [`Discovery::Urls`] the
    /// clients are built now; with [`Discovery::Dns`] at the first attempt and as addresses
    /// appear.
    pub fn new(
        model: &str,
        urls: Vec<String>,
        discovery: Discovery,
        connect: Connect<C>,
    ) -> Result<Self, String> {
        if urls.is_empty() {
            return Err("no URL to call".into());
        }
        let mut authorities = Vec::with_capacity(urls.len());
        for url in &urls {
            let parsed = reqwest::Url::parse(url)
                .map_err(|e| format!("{} is not a URL: {e}", redact(url)))?;
            let (Some(host), Some(port)) = (parsed.host_str(), parsed.port_or_known_default())
            else {
                return Err(format!("{} has no host", redact(url)));
            };
            authorities.push(format!("{host}:{port}"));
        }
        let ejects = urls.len() > 1 || matches!(discovery, Discovery::Dns { .. });
        let replicas = Self {
            model: model.to_owned(),
            connect,
            dns: match discovery {
                Discovery::Urls => None,
                Discovery::Dns { refresh, resolver } => Some(Dns {
                    refresh,
                    resolver,
                    authorities,
                    resolving: tokio::sync::Mutex::new(()),
                }),
            },
            ejects,
            set: Mutex::new(Set {
                replicas: Vec::new(),
                next_id: 0,
                turn: 0,
                resolved_at: None,
                lookups: 0,
            }),
            urls,
        };
        if replicas.dns.is_none() {
            let mut set = replicas.lock();
            for index in 0..replicas.urls.len() {
                let target = Target {
                    base: replicas.urls[index].clone(),
                    pinned: None,
                };
                replicas.add(&mut set, index, target)?;
            }
        }
        Ok(replicas)
    }

    /// Leases the replica the next attempt goes to: the one with the fewest attempts
    /// outstanding among those not ejected (or due a probe). Looks the names up first when
    /// they are due. Fails as unreachable when no replica may be called.
    pub async fn pick(&self) -> Result<Lease<'_, C>, ModelError> {
        if let Some(dns) = &self.dns {
            self.resolve(dns).await;
        }
        let now = Instant::now();
        let mut set = self.lock();
        let count = set.replicas.len();
        let turn = set.turn;
        let chosen = (0..count)
            .map(|k| (k + turn) % count)
            .filter(|&index| !self.ejects || set.replicas[index].available(now))
            .min_by_key(|&index| set.replicas[index].outstanding);
        let Some(index) = chosen else {
            return Err(self.none_left(count));
        };
        set.turn = turn.wrapping_add(1);
        let replica = &mut set.replicas[index];
        replica.outstanding += 1;
        Ok(Lease {
            replicas: self,
            id: replica.id,
            probe: replica.ejected.is_some(),
            target: replica.target.clone(),
            shown: replica.shown.clone(),
            client: replica.client.clone(),
            started: now,
            settled: false,
        })
    }

    /// The error of an attempt no replica may take.
    fn none_left(&self, count: usize) -> ModelError {
        let message = if count == 0 {
            let urls: Vec<String> = self.urls.iter().map(|url| redact(url)).collect();
            format!(
                "model {}: cannot connect to {}: the name resolves to no address",
                self.model,
                urls.join(", ")
            )
        } else {
            format!(
                "model {}: cannot connect to any of its {count} replicas: each failed and is \
                 ejected until it answers a probe",
                self.model
            )
        };
        ModelError::Retryable {
            message,
            retry_after: None,
            unreachable: true,
            overloaded: false,
            attempts: 1,
        }
    }

    /// Adds a replica at `target`, found from URL `url`.
    fn add(&self, set: &mut Set<C>, url: usize, target: Target) -> Result<(), String> {
        let client = (self.connect)(&target)?;
        let shown = target.shown();
        set.replicas.push(Replica {
            id: set.next_id,
            url,
            series: Series::new(&self.model, &shown),
            target,
            shown,
            client,
            outstanding: 0,
            failures: 0,
            ejected: None,
        });
        set.next_id += 1;
        Ok(())
    }

    /// Looks every URL's host up when the last lookup is `refresh` old (or left no replica),
    /// and makes the set the addresses found: new ones are added, gone ones removed, the others
    /// keep their health. A name that cannot be looked up keeps the replicas it had. Callers
    /// that find a lookup under way go on with the set as it is, unless it is empty: then they
    /// wait for that lookup.
    async fn resolve(&self, dns: &Dns) {
        let (due, lookups) = {
            let set = self.lock();
            let due = set.replicas.is_empty()
                || set
                    .resolved_at
                    .is_none_or(|at| Instant::now() >= at + dns.refresh);
            (due, set.lookups)
        };
        if !due {
            return;
        }
        let _resolving = match dns.resolving.try_lock() {
            Ok(guard) => guard,
            Err(_) if !self.lock().replicas.is_empty() => return,
            Err(_) => {
                let guard = dns.resolving.lock().await;
                if self.lock().lookups != lookups {
                    return;
                }
                guard
            }
        };
        let found = futures::future::join_all(dns.authorities.iter().map(|authority| {
            let lookup = (dns.resolver)(authority.clone());
            async move {
                match tokio::time::timeout(RESOLVE_TIMEOUT, lookup).await {
                    Ok(result) => result,
                    Err(_) => Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the lookup timed out",
                    )),
                }
            }
        }))
        .await;
        let mut set = self.lock();
        for (url, addresses) in found.into_iter().enumerate() {
            match addresses {
                Ok(addresses) => self.replace(&mut set, url, addresses),
                Err(error) => tracing::warn!(
                    model = %self.model,
                    url = %redact(&self.urls[url]),
                    %error,
                    "cannot look the replicas up; keeping those found before"
                ),
            }
        }
        set.resolved_at = Some(Instant::now());
        set.lookups += 1;
    }

    /// Makes URL `url`'s replicas those at `addresses`.
    fn replace(&self, set: &mut Set<C>, url: usize, mut addresses: Vec<SocketAddr>) {
        addresses.sort();
        addresses.dedup();
        set.replicas.retain(|replica| {
            let kept = replica.url != url
                || replica
                    .target
                    .pinned
                    .is_some_and(|address| addresses.contains(&address));
            if !kept {
                tracing::info!(model = %self.model, replica = %replica.shown, "replica gone from DNS");
            }
            kept
        });
        for address in addresses {
            let known = set
                .replicas
                .iter()
                .any(|replica| replica.url == url && replica.target.pinned == Some(address));
            if known {
                continue;
            }
            let target = Target {
                base: self.urls[url].clone(),
                pinned: Some(address),
            };
            let shown = target.shown();
            match self.add(set, url, target) {
                Ok(()) => {
                    tracing::info!(model = %self.model, replica = %shown, "replica found in DNS")
                }
                Err(error) => tracing::warn!(
                    model = %self.model,
                    replica = %shown,
                    %error,
                    "cannot build a client for a replica; leaving it out"
                ),
            }
        }
    }

    /// Ends lease `id`: one attempt fewer outstanding, and its health if it got as far as an
    /// outcome.
    fn settle(&self, id: u64, probe: bool, outcome: Option<(Health, Duration)>) {
        let mut set = self.lock();
        let Some(replica) = set.replicas.iter_mut().find(|replica| replica.id == id) else {
            return;
        };
        replica.outstanding -= 1;
        let Some((health, latency)) = outcome else {
            return;
        };
        replica.series.record(health, latency);
        if health == Health::Answered {
            replica.failures = 0;
            if replica.ejected.take().is_some() {
                tracing::info!(model = %self.model, replica = %replica.shown, "replica back");
            }
            return;
        }
        replica.failures += 1;
        let eject = match replica.ejected {
            // A failure of an attempt that started before the replica was ejected says nothing new.
            Some(_) => probe,
            None => health == Health::Refused || replica.failures >= STREAK,
        };
        if self.ejects && eject {
            let length = match replica.ejected {
                Some(ejection) => (ejection.length * 2).min(MAX_EJECTION),
                None => FIRST_EJECTION,
            };
            replica.ejected = Some(Ejection {
                until: Instant::now() + length,
                length,
            });
            replica.series.ejections.inc();
            tracing::warn!(
                model = %self.model,
                replica = %replica.shown,
                seconds = length.as_secs(),
                failures = replica.failures,
                "replica ejected; it is probed again after the ejection"
            );
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Set<C>> {
        self.set.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One attempt's hold on a replica: counted as outstanding there until it is settled with the
/// attempt's [`Health`] or dropped.
pub struct Lease<'a, C: Clone> {
    replicas: &'a Replicas<C>,
    id: u64,
    /// Whether this attempt is an ejected replica's probe.
    probe: bool,
    target: Target,
    shown: String,
    client: C,
    started: Instant,
    settled: bool,
}

impl<C: Clone> Lease<'_, C> {
    /// The client to call the replica with.
    pub fn client(&self) -> &C {
        &self.client
    }

    /// Where the replica is.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// The replica's URL without secrets ([`Target::shown`]).
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// Ends the attempt with how it went.
    pub fn settle(mut self, health: Health) {
        self.settled = true;
        self.replicas
            .settle(self.id, self.probe, Some((health, self.started.elapsed())));
    }
}

impl<C: Clone> Drop for Lease<'_, C> {
    fn drop(&mut self) {
        if !self.settled {
            self.replicas.settle(self.id, self.probe, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn urls(count: usize) -> Vec<String> {
        (1..=count)
            .map(|i| format!("http://10.0.0.{i}:8000/v1"))
            .collect()
    }

    fn fixed(model: &str, count: usize) -> Replicas<Target> {
        Replicas::new(
            model,
            urls(count),
            Discovery::Urls,
            Box::new(|target| Ok(target.clone())),
        )
        .unwrap()
    }

    /// The next lease, held until the caller drops or settles it.
    async fn lease(replicas: &Replicas<Target>) -> Lease<'_, Target> {
        replicas.pick().await.unwrap()
    }

    /// The base URL of the next pick, settled at once with `health`.
    async fn call(replicas: &Replicas<Target>, health: Health) -> String {
        let lease = lease(replicas).await;
        let base = lease.target().base.clone();
        lease.settle(health);
        base
    }

    fn url(i: usize) -> String {
        format!("http://10.0.0.{i}:8000/v1")
    }

    #[tokio::test(start_paused = true)]
    async fn the_fewest_outstanding_wins_and_ties_are_taken_in_turn() {
        let replicas = fixed("fewest", 3);
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(lease(&replicas).await);
        }
        let mut bases: Vec<String> = held.iter().map(|l| l.target().base.clone()).collect();
        bases.sort();
        assert_eq!(bases, urls(3), "three leases, one on each replica");
        // Whichever replica an attempt leaves is the only one with none outstanding: it wins.
        for round in 0..6 {
            let freed = held.remove(round % 3);
            let base = freed.target().base.clone();
            drop(freed);
            let next = lease(&replicas).await;
            assert_eq!(next.target().base, base, "round {round}");
            held.insert(round % 3, next);
        }
        drop(held);

        // One call at a time: every replica is idle each time, and they take turns.
        let mut served = std::collections::HashMap::new();
        for _ in 0..30 {
            *served
                .entry(call(&replicas, Health::Answered).await)
                .or_insert(0) += 1;
        }
        assert_eq!(served.values().copied().collect::<Vec<_>>(), [10, 10, 10]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_streak_of_failures_ejects_a_replica_and_an_answer_breaks_the_streak() {
        let replicas = fixed("streak", 2);
        // Replica 1 fails twice, answers, and fails once more: never three in a row.
        let mut fails = 0;
        while fails < 4 {
            let lease = lease(&replicas).await;
            if lease.target().base == url(1) {
                fails += 1;
                lease.settle(if fails == 3 {
                    Health::Answered
                } else {
                    Health::Failed
                });
            } else {
                lease.settle(Health::Answered);
            }
        }
        let served: Vec<String> = {
            let mut bases = Vec::new();
            for _ in 0..4 {
                bases.push(call(&replicas, Health::Answered).await);
            }
            bases
        };
        assert!(served.contains(&url(1)), "not ejected: {served:?}");

        // Three failures in a row eject it: every later call goes to replica 2.
        let mut fails = 0;
        while fails < STREAK {
            let lease = lease(&replicas).await;
            if lease.target().base == url(1) {
                fails += 1;
                lease.settle(Health::Failed);
            } else {
                lease.settle(Health::Answered);
            }
        }
        for _ in 0..10 {
            assert_eq!(call(&replicas, Health::Answered).await, url(2));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_ejected_replica_is_probed_after_a_doubling_delay_and_an_answer_brings_it_back() {
        let replicas = fixed("probe", 2);
        // Replica 2 is kept busy with one lease, so an idle replica 1 would always be chosen.
        let first = lease(&replicas).await;
        let (busy, refused) = if first.target().base == url(2) {
            (first, lease(&replicas).await)
        } else {
            let second = lease(&replicas).await;
            (second, first)
        };
        assert_eq!(
            (refused.target().base.as_str(), busy.target().base.as_str()),
            (url(1).as_str(), url(2).as_str())
        );
        refused.settle(Health::Refused);

        let mut length = FIRST_EJECTION;
        for round in 0..4 {
            // Out until the delay is up: the busy replica takes the calls.
            tokio::time::advance(length - Duration::from_millis(1)).await;
            assert_eq!(
                call(&replicas, Health::Answered).await,
                url(2),
                "round {round}"
            );
            tokio::time::advance(Duration::from_millis(1)).await;
            // Then one probe, and no second attempt while it is out.
            let probe = lease(&replicas).await;
            assert_eq!(probe.target().base, url(1), "round {round}");
            assert_eq!(call(&replicas, Health::Answered).await, url(2));
            probe.settle(Health::Refused);
            length = (length * 2).min(MAX_EJECTION);
        }
        assert_eq!(length, Duration::from_secs(32));

        // A probe that is answered brings the replica back, and its next ejection is short again.
        tokio::time::advance(length).await;
        let probe = lease(&replicas).await;
        assert_eq!(probe.target().base, url(1));
        probe.settle(Health::Answered);
        assert_eq!(call(&replicas, Health::Refused).await, url(1));
        tokio::time::advance(FIRST_EJECTION - Duration::from_millis(1)).await;
        assert_eq!(call(&replicas, Health::Answered).await, url(2));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(call(&replicas, Health::Answered).await, url(1));
        drop(busy);
    }

    #[tokio::test(start_paused = true)]
    async fn ejections_stop_doubling_at_the_longest() {
        let replicas = fixed("longest", 2);
        let _busy = loop {
            let lease = lease(&replicas).await;
            if lease.target().base == url(2) {
                break lease;
            }
            lease.settle(Health::Refused);
        };
        let mut lengths = Vec::new();
        for _ in 0..8 {
            let started = Instant::now();
            loop {
                tokio::time::advance(Duration::from_secs(1)).await;
                let lease = lease(&replicas).await;
                if lease.target().base == url(1) {
                    lease.settle(Health::Refused);
                    break;
                }
            }
            lengths.push(started.elapsed().as_secs());
        }
        assert_eq!(lengths, [2, 4, 8, 16, 32, 60, 60, 60]);
    }

    #[tokio::test(start_paused = true)]
    async fn when_every_replica_is_ejected_attempts_fail_as_unreachable() {
        let replicas = fixed("all-out", 2);
        for _ in 0..2 {
            call(&replicas, Health::Refused).await;
        }
        match replicas.pick().await {
            Err(ModelError::Retryable {
                unreachable: true,
                retry_after: None,
                message,
                ..
            }) => assert!(
                message.contains("model all-out") && message.contains("2 replicas"),
                "{message}"
            ),
            Err(other) => panic!("{other:?}"),
            Ok(lease) => panic!("leased {:?}", lease.target()),
        }
        tokio::time::advance(FIRST_EJECTION).await;
        assert!(
            replicas.pick().await.is_ok(),
            "probed once the ejection is over"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_single_url_is_never_ejected() {
        let replicas = fixed("single", 1);
        for _ in 0..10 {
            assert_eq!(call(&replicas, Health::Refused).await, url(1));
        }
        for _ in 0..10 {
            assert_eq!(call(&replicas, Health::Failed).await, url(1));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_failure_of_an_attempt_from_before_the_ejection_does_not_lengthen_it() {
        let replicas = fixed("late", 2);
        let (one, two) = (lease(&replicas).await, lease(&replicas).await);
        let (on_1, on_2) = if one.target().base == url(1) {
            (one, two)
        } else {
            (two, one)
        };
        // Both have one outstanding: the tie goes to replica 1, whose turn it is.
        let another_on_1 = lease(&replicas).await;
        assert_eq!(another_on_1.target().base, url(1));
        on_1.settle(Health::Refused);
        tokio::time::advance(Duration::from_secs(1)).await;
        another_on_1.settle(Health::Refused);
        // Still out for FIRST_EJECTION from the first refusal, not doubled.
        tokio::time::advance(FIRST_EJECTION - Duration::from_secs(1)).await;
        let probe = lease(&replicas).await;
        assert_eq!(probe.target().base, url(1));
        drop((probe, on_2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_lease_is_no_longer_outstanding() {
        let replicas = fixed("dropped", 2);
        for _ in 0..5 {
            let lease = lease(&replicas).await;
            drop(lease);
        }
        let set = replicas.lock();
        assert!(set.replicas.iter().all(|replica| replica.outstanding == 0));
        assert!(set.replicas.iter().all(|replica| replica.ejected.is_none()));
    }

    /// A resolver that answers from a script, one answer per lookup, and counts lookups.
    fn scripted(answers: Vec<io::Result<Vec<SocketAddr>>>) -> (Resolver, Arc<AtomicUsize>) {
        let lookups = Arc::new(AtomicUsize::new(0));
        let answers = Arc::new(Mutex::new(answers));
        let counter = lookups.clone();
        let resolver: Resolver = Arc::new(move |authority| {
            assert_eq!(authority, "vllm.test:8000");
            counter.fetch_add(1, Ordering::SeqCst);
            let answer = answers.lock().unwrap().remove(0);
            Box::pin(async move { answer })
        });
        (resolver, lookups)
    }

    fn addresses(last_octets: &[u8]) -> Vec<SocketAddr> {
        last_octets
            .iter()
            .map(|octet| SocketAddr::from(([127, 0, 0, *octet], 8000)))
            .collect()
    }

    fn pinned(replicas: &Replicas<Target>) -> Vec<SocketAddr> {
        let mut pinned: Vec<SocketAddr> = replicas
            .lock()
            .replicas
            .iter()
            .filter_map(|replica| replica.target.pinned)
            .collect();
        pinned.sort();
        pinned
    }

    #[tokio::test(start_paused = true)]
    async fn a_name_is_spread_over_its_addresses_and_looked_up_again_when_due() {
        let (resolver, lookups) = scripted(vec![
            Ok(addresses(&[1, 2, 3])),
            Err(io::Error::other("SERVFAIL")),
            Ok(addresses(&[2, 3, 4, 4])),
        ]);
        let replicas = Replicas::new(
            "dns",
            vec!["http://vllm.test:8000/v1".into()],
            Discovery::Dns {
                refresh: Duration::from_secs(30),
                resolver,
            },
            Box::new(|target| Ok(target.clone())),
        )
        .unwrap();
        let mut served = std::collections::HashMap::new();
        for _ in 0..30 {
            let lease = lease(&replicas).await;
            assert_eq!(lease.target().base, "http://vllm.test:8000/v1");
            *served.entry(lease.target().pinned.unwrap()).or_insert(0) += 1;
            lease.settle(Health::Answered);
        }
        assert_eq!(
            lookups.load(Ordering::SeqCst),
            1,
            "looked up once within 30 s"
        );
        assert_eq!(served.len(), 3);
        assert!(served.values().all(|n| *n == 10), "{served:?}");

        // 127.0.0.2 is ejected; a failed lookup keeps the set as it was.
        let ejected = SocketAddr::from(([127, 0, 0, 2], 8000));
        loop {
            let lease = lease(&replicas).await;
            let here = lease.target().pinned == Some(ejected);
            lease.settle(if here {
                Health::Refused
            } else {
                Health::Answered
            });
            if here {
                break;
            }
        }
        let dns = replicas.dns.as_ref().unwrap();
        replicas.resolve(dns).await;
        assert_eq!(
            lookups.load(Ordering::SeqCst),
            1,
            "not due again within 30 s"
        );
        tokio::time::advance(Duration::from_secs(30)).await;
        replicas.resolve(dns).await;
        assert_eq!(lookups.load(Ordering::SeqCst), 2);
        assert_eq!(pinned(&replicas), addresses(&[1, 2, 3]));

        // The next lookup drops 127.0.0.1, adds 127.0.0.4 once, and 127.0.0.2 stays ejected.
        let ejected_id = |replicas: &Replicas<Target>| {
            let set = replicas.lock();
            let replica = set
                .replicas
                .iter()
                .find(|r| r.target.pinned == Some(ejected));
            replica.map(|replica| (replica.id, replica.ejected.is_some()))
        };
        let before = ejected_id(&replicas);
        tokio::time::advance(Duration::from_secs(30)).await;
        replicas.resolve(dns).await;
        assert_eq!(lookups.load(Ordering::SeqCst), 3);
        assert_eq!(pinned(&replicas), addresses(&[2, 3, 4]));
        assert_eq!(ejected_id(&replicas), before);
        assert!(before.is_some_and(|(_, ejected)| ejected));
    }

    #[tokio::test(start_paused = true)]
    async fn a_name_without_addresses_is_unreachable_and_looked_up_at_every_attempt() {
        let (resolver, lookups) = scripted(vec![
            Err(io::Error::other("NXDOMAIN")),
            Ok(Vec::new()),
            Ok(addresses(&[7])),
        ]);
        let replicas = Replicas::new(
            "nxdomain",
            vec!["https://key@vllm.test:8000/v1".into()],
            Discovery::Dns {
                refresh: Duration::from_secs(30),
                resolver,
            },
            Box::new(|target| Ok(target.clone())),
        )
        .unwrap();
        for _ in 0..2 {
            match replicas.pick().await {
                Err(ModelError::Retryable {
                    unreachable: true,
                    message,
                    ..
                }) => {
                    assert!(message.contains("https://vllm.test:8000/v1"), "{message}");
                    assert!(!message.contains("key@"), "{message}");
                }
                Err(other) => panic!("{other:?}"),
                Ok(lease) => panic!("leased {:?}", lease.target()),
            }
        }
        let lease = lease(&replicas).await;
        assert_eq!(lease.shown(), "https://127.0.0.7:8000/v1");
        assert_eq!(
            lease.target().pinned_name(),
            Some((
                "vllm.test".to_owned(),
                SocketAddr::from(([127, 0, 0, 7], 8000))
            ))
        );
        assert_eq!(lookups.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn a_target_is_shown_without_secrets_and_pins_only_names() {
        let by_url = Target {
            base: "http://alice:hunter2@10.0.0.1:8000/v1".into(),
            pinned: None,
        };
        assert_eq!(by_url.shown(), "http://10.0.0.1:8000/v1");
        assert_eq!(by_url.pinned_name(), None);
        let v6 = Target {
            base: "https://alice:hunter2@vllm.test/v1?key=s3cret".into(),
            pinned: Some("[fd00::5]:443".parse().unwrap()),
        };
        assert_eq!(v6.shown(), "https://[fd00::5]/v1");
        let literal = Target {
            base: "http://10.0.0.9:8000/v1".into(),
            pinned: Some("10.0.0.9:8000".parse().unwrap()),
        };
        assert_eq!(literal.pinned_name(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn calls_and_ejections_are_counted_per_replica() {
        let replicas = fixed("counted-model", 2);
        for _ in 0..4 {
            call(&replicas, Health::Answered).await;
        }
        while call(&replicas, Health::Answered).await != url(1) {}
        while call(&replicas, Health::Refused).await != url(2) {}
        let text = metrics().render();
        for line in [
            "cai_replica_calls_total{model=\"counted-model\",replica=\"http://10.0.0.1:8000/v1\",outcome=\"answered\"} 3",
            "cai_replica_calls_total{model=\"counted-model\",replica=\"http://10.0.0.2:8000/v1\",outcome=\"refused\"} 1",
            "cai_replica_ejections_total{model=\"counted-model\",replica=\"http://10.0.0.2:8000/v1\"} 1",
            "cai_replica_call_duration_seconds_count{model=\"counted-model\",replica=\"http://10.0.0.1:8000/v1\"} 3",
        ] {
            assert!(text.contains(line), "{line:?} missing from\n{text}");
        }
    }
}
