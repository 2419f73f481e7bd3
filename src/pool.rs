//! A pool of connections behind the one client API: a broker that limits each connection
//! (AWS IoT Core: about 100 publishes per second, 50 subscriptions) is used past one
//! connection's ceiling by spreading calls over several, each with its own client id,
//! reply subscriptions and quotas. A pool of one is a plain client.
//!
//! Each call goes to the connection with the most room: connected first, then one whose
//! publish-rate quota is not exhausted, then one that already holds the call's reply
//! filter, then the fewest pending calls; ties rotate. Holding the filter comes before
//! the pending count because in the seed reply mode every connection subscribed to a
//! device's reply filter receives all of that device's replies (and drops the others'). A call's answer comes back on the
//! connection that sent it; each connection reconnects on its own.

use crate::client::{CallError, ClientOptions, EventSink, Prepared, RpcClient, Stats, Waiter};
use crate::link::BrokerAddress;
use crate::metrics::{cumulative, merged_percentile, Cumulative, LatencyHistogram};
use crate::presence::Presence;
use crate::protocol::{Headers, InputError};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;

/// A request prepared on the connection that will send it.
#[derive(Debug)]
pub struct PoolPrepared {
    connection: usize,
    prepared: Prepared,
}

impl PoolPrepared {
    /// The request itself, to name its device or let it wait for it.
    pub fn request_mut(&mut self) -> &mut Prepared {
        &mut self.prepared
    }
}

/// The pool's counters: the sum over its connections, and each connection's own.
#[derive(Debug, Clone)]
pub struct PoolStats {
    pub total: Stats,
    pub connections: Vec<(String, Stats)>,
}

pub struct RpcPool<W: Waiter> {
    clients: Vec<Arc<RpcClient<W>>>,
    rotation: AtomicUsize,
}

impl<W: Waiter> RpcPool<W> {
    /// `connections` connections with client ids `{client_id}-{i}` (one keeps `client_id`).
    pub fn new(options: ClientOptions, connections: usize) -> Result<Self, InputError> {
        let connections = connections.max(1);
        let base_id = options.connection.client_id.clone();
        let mut clients = Vec::with_capacity(connections);
        for i in 0..connections {
            let mut own = options.clone();
            if connections > 1 {
                own.connection.client_id = format!("{base_id}-{i}");
            }
            clients.push(Arc::new(RpcClient::new(own)?));
        }
        Ok(RpcPool {
            clients,
            rotation: AtomicUsize::new(0),
        })
    }

    pub fn client_ids(&self) -> Vec<String> {
        let id = |c: &Arc<RpcClient<W>>| c.options().connection.client_id.clone();
        self.clients.iter().map(id).collect()
    }

    /// Where each connection's events go: `make_sink(client_id)` builds its sink.
    pub fn set_event_sinks(&self, make_sink: impl Fn(Arc<str>) -> EventSink) {
        for client in &self.clients {
            let id: Arc<str> = Arc::from(client.options().connection.client_id.as_str());
            client.set_event_sink(make_sink(id));
        }
    }

    /// Connects every connection at once; if one fails, all are closed and its error is
    /// returned.
    pub async fn connect(&self) -> Result<(), CallError> {
        if let [only] = self.clients.as_slice() {
            return only.connect().await;
        }
        let mut connecting = JoinSet::new();
        for client in &self.clients {
            let client = client.clone();
            connecting.spawn(async move { client.connect().await });
        }
        let mut failure = None;
        while let Some(done) = connecting.join_next().await {
            let outcome = done.unwrap_or_else(|e| Err(CallError::NotConnected(e.to_string())));
            if let Err(error) = outcome {
                failure.get_or_insert(error);
            }
        }
        match failure {
            None => Ok(()),
            Some(error) => {
                self.close(Duration::ZERO).await;
                Err(error)
            }
        }
    }

    /// Closes every connection at once (each waits up to `grace` for its calls).
    pub async fn close(&self, grace: Duration) {
        if let [only] = self.clients.as_slice() {
            return only.close(grace).await;
        }
        let mut closing = JoinSet::new();
        for client in &self.clients {
            let client = client.clone();
            closing.spawn(async move { client.close(grace).await });
        }
        while closing.join_next().await.is_some() {}
    }

    /// The connection a call on `topic` should use now. Of the connected ones, the next two
    /// in rotation are compared (the power of two choices: nearly as even as comparing every
    /// connection, at two engine locks per call instead of N); a connection that is not
    /// throttled, already holds the reply filter, then has fewer calls pending, wins.
    fn pick(&self, topic: &str) -> usize {
        let count = self.clients.len();
        if count == 1 {
            return 0;
        }
        let start = self.rotation.fetch_add(1, Ordering::Relaxed) % count;
        let mut connected = (0..count)
            .map(|offset| (start + offset) % count)
            .filter(|&index| self.clients[index].is_connected());
        let (first, second) = match (connected.next(), connected.next()) {
            (Some(first), Some(second)) => (first, second),
            (Some(only), None) => return only,
            // None connected: the rotation's (it reconnects like any other).
            (None, _) => return start,
        };
        let key = |index: usize| {
            let load = self.clients[index].load(topic);
            (load.throttled, !load.holds_reply_filter, load.pending)
        };
        if key(second) < key(first) {
            second
        } else {
            first
        }
    }

    pub fn prepare(
        &self,
        topic: &str,
        payload: &[u8],
        request_id: Option<&str>,
        headers: Headers,
    ) -> Result<PoolPrepared, CallError> {
        let connection = self.pick(topic);
        let prepared = self.clients[connection].prepare(topic, payload, request_id, headers)?;
        Ok(PoolPrepared {
            connection,
            prepared,
        })
    }

    pub fn prepare_gather(
        &self,
        topic: &str,
        payload: &[u8],
        max_replies: Option<usize>,
        headers: Headers,
    ) -> Result<PoolPrepared, CallError> {
        let connection = self.pick(topic);
        let prepared =
            self.clients[connection].prepare_gather(topic, payload, max_replies, headers)?;
        Ok(PoolPrepared {
            connection,
            prepared,
        })
    }

    /// Sends a prepared request on its connection; returns its request id.
    pub fn start(&self, prepared: PoolPrepared, timeout: Duration, waiter: W) -> String {
        self.clients[prepared.connection].start(prepared.prepared, timeout, waiter)
    }

    pub fn notify(&self, topic: &str, payload: &[u8], headers: Headers) -> Result<(), CallError> {
        self.clients[self.pick(topic)].notify(topic, payload, headers)
    }

    /// What the presence source last said of `device`. Every connection subscribes the
    /// source and hears the same events; the first one's view is read.
    pub fn presence(&self, device: &str) -> Option<Presence> {
        self.clients[0].presence(device)
    }

    /// A device's presence from the application's own source, told to every connection.
    pub fn report_presence(
        &self,
        device: &str,
        online: bool,
        since_ms: Option<i64>,
        reason: Option<String>,
    ) {
        for client in &self.clients {
            client.report_presence(device, online, since_ms, reason.clone());
        }
    }

    /// The caller gave up on a call, whichever connection holds it.
    pub fn forget(&self, request_id: &str) -> bool {
        self.clients.iter().any(|c| c.forget(request_id))
    }

    pub fn pending(&self) -> usize {
        self.clients.iter().map(|c| c.pending()).sum()
    }

    pub fn reply_subscriptions(&self) -> usize {
        self.clients.iter().map(|c| c.reply_subscriptions()).sum()
    }

    /// Whether every connection is up.
    pub fn is_connected(&self) -> bool {
        self.clients.iter().all(|c| c.is_connected())
    }

    /// Which broker each connection is up with (None while it is down), in order.
    pub fn connected_to(&self) -> Vec<Option<BrokerAddress>> {
        self.clients.iter().map(|c| c.connected_to()).collect()
    }

    pub fn stats(&self) -> PoolStats {
        let connections: Vec<(String, Stats)> = self
            .clients
            .iter()
            .map(|c| (c.options().connection.client_id.clone(), c.stats()))
            .collect();
        let mut total = Stats::default();
        for (_, s) in &connections {
            total.add(s);
        }
        let histograms: Vec<&LatencyHistogram> =
            self.clients.iter().map(|c| c.latency_histogram()).collect();
        total.latency_p50 = merged_percentile(&histograms, 0.50);
        total.latency_p90 = merged_percentile(&histograms, 0.90);
        total.latency_p99 = merged_percentile(&histograms, 0.99);
        PoolStats { total, connections }
    }

    /// The latencies of every connection's answered calls, read against `bounds`.
    pub fn latency(&self, bounds: &[Duration]) -> Cumulative {
        let histograms: Vec<&LatencyHistogram> =
            self.clients.iter().map(|c| c.latency_histogram()).collect();
        cumulative(&histograms, bounds)
    }
}
