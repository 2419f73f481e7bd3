//! The socket driver under every connection: it connects (TCP, TLS, CONNECT/CONNACK) and
//! then moves bytes in batches. rumqttc's state machine (`MqttState`) and packet codecs do
//! the protocol; this file only decides when to read and write. Each wake-up encodes every
//! request that may go now into one buffer and writes it with one write, and parses every
//! complete packet a read brought: rumqttc's own event loop writes and flushes each packet
//! with a system call of its own, which was the largest cost of a call.
//!
//! What a version (3.1.1 or 5) adds is behind `Wire` (see `v4.rs`, `v5.rs`).

use super::{
    io_error, BrokerAddress, ConnectedTo, ConnectionOptions, Inbound, LinkError, LinkErrorKind,
};
use bytes::{Buf, BytesMut};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

/// Requests are taken from the channel only while less than this is waiting to be
/// written: a broker that stops reading holds the client back (its requests wait in the
/// bounded channel, and a full channel refuses new ones) instead of growing this buffer.
const WRITE_HIGH_WATER: usize = 256 * 1024;

/// Room made in the read buffer before each read: a busy connection reads many packets
/// per system call.
const READ_CHUNK: usize = 64 * 1024;

/// How long a deliberate close waits for the broker to close its side after DISCONNECT.
const DRAIN_ON_CLOSE: Duration = Duration::from_secs(2);

/// What the connection needs from one MQTT version: rumqttc's codec and state machine.
pub trait Wire {
    type State: Send;
    type Request: Send + 'static;
    type Packet: Send;

    fn new_state(max_inflight: u16) -> Self::State;
    /// The CONNECT packet for these options.
    fn connect_packet(options: &ConnectionOptions) -> Self::Packet;
    /// The largest packet read from the broker (a larger one ends the connection).
    fn read_limit(options: &ConnectionOptions) -> usize;
    /// One complete packet from the front of `buffer`; `None` until more bytes arrive.
    fn read(buffer: &mut BytesMut, limit: usize) -> Result<Option<Self::Packet>, LinkError>;
    fn write(packet: &Self::Packet, buffer: &mut BytesMut, limit: usize) -> Result<(), LinkError>;
    /// The broker's answer to CONNECT: queues the `Connected` event, or says why not.
    fn accept(state: &mut Self::State, packet: Self::Packet) -> Result<Accepted, LinkError>;
    /// A packet from the broker, with the packet to answer it with (a PUBACK, ...).
    fn incoming(
        state: &mut Self::State,
        packet: Self::Packet,
    ) -> Result<Option<Self::Packet>, LinkError>;
    /// A request of the client; only the kinds `Outbox` sends are accepted (rumqttc panics
    /// on others), so a new kind is an error, never a panic.
    fn outgoing(
        state: &mut Self::State,
        request: Self::Request,
    ) -> Result<Option<Self::Packet>, LinkError>;
    fn ping(state: &mut Self::State) -> Result<Option<Self::Packet>, LinkError>;
    /// Forgets the connection: gives back the unacknowledged publishes, to send again.
    fn clean(state: &mut Self::State) -> Vec<Self::Request>;
    fn next_event(state: &mut Self::State) -> Option<Inbound>;
    fn inflight(state: &Self::State) -> u16;
    /// rumqttc holds a publish back until the PUBACK of the one whose packet id it needs.
    fn collision(state: &Self::State) -> bool;
    fn kind(request: &Self::Request) -> RequestKind;
}

/// The parts of a `Wire` whose text is the same for both versions: rumqttc's 3.1.1 and 5
/// modules have types and methods of the same names. Expanded in `v4.rs` and `v5.rs`, where
/// `MqttState`, `Packet`, `Request`, `StateError` and `CodecError` name that version's.
macro_rules! same_in_both_versions {
    () => {
        fn new_state(max_inflight: u16) -> MqttState {
            MqttState::new(max_inflight, false)
        }

        fn incoming(state: &mut MqttState, packet: Packet) -> Result<Option<Packet>, LinkError> {
            state.handle_incoming_packet(packet).map_err(state_error)
        }

        fn clean(state: &mut MqttState) -> Vec<Request> {
            state.clean()
        }

        fn inflight(state: &MqttState) -> u16 {
            state.inflight()
        }

        fn collision(state: &MqttState) -> bool {
            state.collision.is_some()
        }
    };
    // Each version says first what its broker's own DISCONNECT means (`server_disconnect`).
    (state_error) => {
        fn state_error(error: StateError) -> LinkError {
            if let Some(said) = server_disconnect(&error) {
                return said;
            }
            match &error {
                StateError::Io(io) | StateError::Deserialization(CodecError::Io(io)) => {
                    super::classify_io(io, error.to_string())
                }
                _ => LinkError::other(error.to_string()),
            }
        }
    };
}
pub(super) use same_in_both_versions;

/// What the connection needs to know of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// A publish, with its packet id if it has one (a replay of an unacknowledged one).
    Publish(Option<u16>),
    Subscription,
    /// An acknowledgement: never replayed (the broker sends the publish again instead).
    Ack,
    Disconnect,
    Other,
}

/// What the broker granted in its CONNACK.
pub struct Accepted {
    pub session_present: bool,
    /// MQTT 5: how many QoS 1 publishes it takes unacknowledged.
    pub receive_maximum: Option<u16>,
    /// MQTT 5: the largest packet it accepts.
    pub max_packet_size: Option<u32>,
    /// MQTT 5: the keep-alive it wants instead of ours (the client must use it).
    pub server_keep_alive: Option<u16>,
}

trait Socket: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Socket for T {}

/// One connection to the broker, reconnected by calling `next` again after an error.
pub struct Connection<W: Wire> {
    options: ConnectionOptions,
    tls: Option<Arc<rustls::ClientConfig>>,
    state: W::State,
    requests: flume::Receiver<W::Request>,
    /// Sent before new requests: the publishes a lost connection left unacknowledged, and
    /// the requests it left in the channel (what the client's driver inspects).
    pub(super) pending: VecDeque<W::Request>,
    socket: Option<Box<dyn Socket>>,
    read_buffer: BytesMut,
    write_buffer: BytesMut,
    /// Written bytes a TLS stream may still hold: flushed before anything else waits.
    unflushed: bool,
    keepalive: Option<Pin<Box<Sleep>>>,
    /// Ours, or the broker's (MQTT 5 Server Keep Alive).
    keepalive_interval: Duration,
    /// Ours, then the lower of ours and the broker's receive maximum.
    max_inflight: u16,
    inflight_limit: u16,
    read_limit: usize,
    write_limit: usize,
    /// The broker addresses, and the index of the one the next connect tries first.
    addresses: Vec<BrokerAddress>,
    next_address: usize,
    pub(super) connected_to: ConnectedTo,
    /// When the last CONNECT attempt began (`min_connect_interval` counts from it).
    last_attempt: Option<Instant>,
}

impl<W: Wire> Drop for Connection<W> {
    /// A connection let go (its client closed or dropped) is with no broker.
    fn drop(&mut self) {
        self.connected_to.set(None);
    }
}

/// What one turn of the socket did.
enum Transferred {
    Read(usize),
    Wrote,
}

/// What woke the connection.
enum Woke<R> {
    Read,
    Wrote,
    Request(R),
    PingDue,
}

impl<W: Wire> Connection<W> {
    pub fn new(
        options: ConnectionOptions,
        tls: Option<Arc<rustls::ClientConfig>>,
        requests: flume::Receiver<W::Request>,
        max_inflight: u16,
    ) -> Self {
        let read_limit = W::read_limit(&options);
        Connection {
            addresses: options.addresses(),
            next_address: 0,
            connected_to: ConnectedTo::default(),
            options,
            tls,
            state: W::new_state(max_inflight),
            requests,
            pending: VecDeque::new(),
            socket: None,
            read_buffer: BytesMut::new(),
            write_buffer: BytesMut::new(),
            unflushed: false,
            keepalive: None,
            keepalive_interval: Duration::ZERO,
            max_inflight,
            inflight_limit: max_inflight,
            read_limit,
            write_limit: usize::MAX,
            last_attempt: None,
        }
    }

    /// The next event. An error means the connection is down; calling again reconnects.
    /// Cancel-safe: nothing is lost when the future is dropped between events.
    pub async fn next(&mut self) -> Result<Inbound, LinkError> {
        loop {
            if let Some(event) = self.buffered() {
                return Ok(event);
            }
            if self.socket.is_none() {
                self.connect_to_any().await?;
            } else if let Err(error) = self.exchange().await {
                self.clean();
                // The node that was lost is likely still down: start from the next one.
                self.next_address = (self.next_address + 1) % self.addresses.len().max(1);
                self.connected_to.set(None);
                return Err(error);
            }
        }
    }

    /// An event already read or produced, without any I/O: what the last read brought
    /// is handed out in a loop, without a select per event.
    pub fn buffered(&mut self) -> Option<Inbound> {
        let event = W::next_event(&mut self.state)?;
        if matches!(event, Inbound::DisconnectSent) {
            // Closed on purpose: with no broker from now on.
            self.connected_to.set(None);
        }
        Some(event)
    }

    /// Tries each broker address once, in order from `next_address`, each within
    /// `connect_timeout`; fails with the last one's error when none accepts.
    async fn connect_to_any(&mut self) -> Result<(), LinkError> {
        let count = self.addresses.len().max(1);
        let mut last_error = None;
        for _ in 0..count {
            let Some((host, port)) = self.addresses.get(self.next_address).cloned() else {
                break;
            };
            if let Some(last) = self.last_attempt {
                tokio::time::sleep_until(last + self.options.min_connect_interval).await;
            }
            self.last_attempt = Some(Instant::now());
            let timeout = self.options.connect_timeout;
            let connected = tokio::time::timeout(timeout, self.connect(&host, port))
                .await
                .unwrap_or_else(|_| {
                    Err(LinkError::of(
                        LinkErrorKind::TimedOut,
                        format!("no answer within {timeout:?}"),
                    ))
                });
            match connected {
                Ok(()) => {
                    self.connected_to.set(Some((host, port)));
                    return Ok(());
                }
                Err(error) => {
                    self.socket = None;
                    last_error = Some(match count {
                        1 => error,
                        _ => LinkError::of(error.kind, format!("{host}:{port}: {error}")),
                    });
                    self.next_address = (self.next_address + 1) % count;
                }
            }
        }
        Err(last_error.unwrap_or_else(|| LinkError::other("no broker address to connect to")))
    }

    /// Opens the socket and has the broker at `host:port` accept our CONNECT.
    async fn connect(&mut self, host: &str, port: u16) -> Result<(), LinkError> {
        let tcp = TcpStream::connect((host, port)).await.map_err(io_error)?;
        // Every request is one small packet: Nagle's algorithm would hold it for an ACK.
        tcp.set_nodelay(true).map_err(io_error)?;
        let mut socket: Box<dyn Socket> = match &self.tls {
            None => Box::new(tcp),
            Some(config) => {
                let tls_error = |e: &dyn std::fmt::Display| {
                    LinkError::of(LinkErrorKind::Tls, format!("TLS: {e}"))
                };
                let name = rustls::pki_types::ServerName::try_from(host.to_owned())
                    .map_err(|e| tls_error(&e))?;
                let connector = rumqttc::tokio_rustls::TlsConnector::from(config.clone());
                Box::new(
                    connector
                        .connect(name, tcp)
                        .await
                        .map_err(|e| tls_error(&e))?,
                )
            }
        };
        self.read_buffer.clear();
        self.write_buffer.clear();
        W::write(
            &W::connect_packet(&self.options),
            &mut self.write_buffer,
            usize::MAX,
        )?;
        socket
            .write_all(&self.write_buffer)
            .await
            .map_err(io_error)?;
        socket.flush().await.map_err(io_error)?;
        self.write_buffer.clear();
        let connack = loop {
            if let Some(packet) = W::read(&mut self.read_buffer, self.read_limit)? {
                break packet;
            }
            self.read_buffer.reserve(READ_CHUNK);
            let read = poll_fn(|cx| {
                tokio_util::io::poll_read_buf(Pin::new(&mut socket), cx, &mut self.read_buffer)
            })
            .await
            .map_err(io_error)?;
            if read == 0 {
                return Err(LinkError::of(
                    LinkErrorKind::Closed,
                    "the broker closed the connection before answering CONNECT",
                ));
            }
        };
        let accepted = W::accept(&mut self.state, connack)?;
        if !accepted.session_present {
            // A new session: nothing of the old one is sent again.
            self.pending.clear();
        }
        self.inflight_limit = accepted
            .receive_maximum
            .map_or(self.max_inflight, |broker| broker.min(self.max_inflight));
        self.write_limit = accepted
            .max_packet_size
            .and_then(|size| usize::try_from(size).ok())
            .unwrap_or(usize::MAX);
        let keepalive = accepted
            .server_keep_alive
            .map_or(self.options.keepalive, |seconds| {
                Duration::from_secs(u64::from(seconds))
            });
        self.keepalive_interval = keepalive;
        self.keepalive = (!keepalive.is_zero()).then(|| Box::pin(tokio::time::sleep(keepalive)));
        self.socket = Some(socket);
        // Packets that came with the CONNACK.
        self.parse_incoming()?;
        self.send_queued().await
    }

    /// One wake-up of a live connection: whichever comes first of a read, a write that
    /// made room, a request or the keep-alive ping; then every request that may go now is
    /// encoded, and what was encoded is written at once.
    async fn exchange(&mut self) -> Result<(), LinkError> {
        let may_take = self.may_take_request();
        let Some(socket) = self.socket.as_mut() else {
            return Ok(());
        };
        let (write_buffer, read_buffer) = (&mut self.write_buffer, &mut self.read_buffer);
        let unflushed = &mut self.unflushed;
        let keepalive = self.keepalive.as_mut();
        let ping_due = async {
            match keepalive {
                Some(sleep) => sleep.as_mut().await,
                None => std::future::pending().await,
            }
        };
        let woke = tokio::select! {
            biased;
            transferred = poll_fn(|cx| transfer(socket, write_buffer, unflushed, read_buffer, cx)) => {
                match transferred.map_err(io_error)? {
                    Transferred::Read(0) => {
                        return Err(LinkError::of(
                            LinkErrorKind::Closed,
                            "the broker closed the connection",
                        ))
                    }
                    Transferred::Read(_) => Woke::Read,
                    Transferred::Wrote => Woke::Wrote,
                }
            }
            request = self.requests.recv_async(), if may_take => match request {
                Ok(request) => Woke::Request(request),
                Err(_) => return Err(LinkError::other("the client was dropped")),
            },
            _ = ping_due => Woke::PingDue,
        };
        let disconnect = match woke {
            Woke::Read => {
                self.parse_incoming()?;
                false
            }
            Woke::Wrote => false,
            Woke::Request(request) => self.take(request)?,
            Woke::PingDue => {
                if let Some(sleep) = self.keepalive.as_mut() {
                    sleep
                        .as_mut()
                        .reset(Instant::now() + self.keepalive_interval);
                }
                if let Some(packet) = W::ping(&mut self.state)? {
                    W::write(&packet, &mut self.write_buffer, self.write_limit)?;
                }
                false
            }
        };
        if disconnect {
            return self.finish_disconnect().await;
        }
        self.send_queued().await
    }

    /// Encodes every request that may go now and writes what the socket takes: the end of
    /// each wake-up, and of a connect (the requests a lost connection left, and those that
    /// waited for this one).
    async fn send_queued(&mut self) -> Result<(), LinkError> {
        if self.queue_requests()? {
            return self.finish_disconnect().await;
        }
        self.write_ready().await
    }

    /// Writes what the socket takes now, without waiting for room (the next `transfer`
    /// writes the rest).
    async fn write_ready(&mut self) -> Result<(), LinkError> {
        let Some(socket) = self.socket.as_mut() else {
            return Ok(());
        };
        let (write_buffer, unflushed) = (&mut self.write_buffer, &mut self.unflushed);
        poll_fn(|cx| Poll::Ready(write_some(socket, write_buffer, unflushed, cx)))
            .await
            .map(drop)
            .map_err(io_error)
    }

    /// Whether a new request may go now: rumqttc's flow control (in-flight limit, packet
    /// id collision) and room in the write buffer.
    fn may_take_request(&self) -> bool {
        self.write_buffer.len() < WRITE_HIGH_WATER
            && W::inflight(&self.state) < self.inflight_limit
            && !W::collision(&self.state)
    }

    /// Encodes every request that may go now: first the ones a lost connection left, then
    /// the channel's, without waiting. Returns whether a DISCONNECT was queued.
    fn queue_requests(&mut self) -> Result<bool, LinkError> {
        while self.write_buffer.len() < WRITE_HIGH_WATER {
            let request = match self.pending.pop_front() {
                Some(request) => request,
                None if self.may_take_request() => match self.requests.try_recv() {
                    Ok(request) => request,
                    Err(_) => break,
                },
                None => break,
            };
            if self.take(request)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Hands one request to the state machine and encodes its packet. Returns whether it
    /// was the DISCONNECT.
    fn take(&mut self, request: W::Request) -> Result<bool, LinkError> {
        let disconnect = W::kind(&request) == RequestKind::Disconnect;
        if let Some(packet) = W::outgoing(&mut self.state, request)? {
            W::write(&packet, &mut self.write_buffer, self.write_limit)?;
        }
        Ok(disconnect)
    }

    /// Writes everything up to the DISCONNECT before its event is handed out (whoever asked
    /// for it stops reading events then, and drops the socket).
    async fn finish_disconnect(&mut self) -> Result<(), LinkError> {
        let Some(socket) = self.socket.as_mut() else {
            return Ok(());
        };
        let written = async {
            socket.write_all(&self.write_buffer).await?;
            socket.flush().await
        };
        tokio::time::timeout(self.options.connect_timeout, written)
            .await
            .map_err(|_| LinkError::of(LinkErrorKind::TimedOut, "DISCONNECT not written"))?
            .map_err(io_error)?;
        self.write_buffer.clear();
        // Closing a socket with unread bytes makes the kernel reset the connection, and a
        // reset may discard what the broker had received but not yet read: the answers
        // written just before. So half-close, and read until the broker closes its side.
        let drained = async {
            socket.shutdown().await?;
            let mut discard = [0u8; 4096];
            while socket.read(&mut discard).await? > 0 {}
            io::Result::Ok(())
        };
        let _ = tokio::time::timeout(DRAIN_ON_CLOSE, drained).await;
        Ok(())
    }

    /// Hands every complete packet read to the state machine, queueing its answers.
    fn parse_incoming(&mut self) -> Result<(), LinkError> {
        while let Some(packet) = W::read(&mut self.read_buffer, self.read_limit)? {
            if let Some(answer) = W::incoming(&mut self.state, packet)? {
                W::write(&answer, &mut self.write_buffer, self.write_limit)?;
            }
        }
        Ok(())
    }

    /// After a connection error: the unacknowledged publishes and the requests still in
    /// the channel wait in `pending` for the next connection (as rumqttc's event loop does).
    fn clean(&mut self) {
        self.socket = None;
        self.keepalive = None;
        self.unflushed = false;
        self.read_buffer.clear();
        self.write_buffer.clear();
        let unacknowledged = W::clean(&mut self.state);
        self.pending.extend(unacknowledged);
        let queued = self
            .requests
            .drain()
            .filter(|r| W::kind(r) != RequestKind::Ack);
        self.pending.extend(queued);
    }
}

/// Writes what is buffered (as much as the socket takes) and reads what has arrived.
/// Ready when something was read, or when written bytes left the buffer.
fn transfer(
    socket: &mut Box<dyn Socket>,
    write_buffer: &mut BytesMut,
    unflushed: &mut bool,
    read_buffer: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<Transferred>> {
    let wrote = write_some(socket, write_buffer, unflushed, cx)?;
    read_buffer.reserve(READ_CHUNK);
    match tokio_util::io::poll_read_buf(Pin::new(&mut **socket), cx, read_buffer) {
        Poll::Ready(result) => Poll::Ready(result.map(Transferred::Read)),
        Poll::Pending if wrote => Poll::Ready(Ok(Transferred::Wrote)),
        Poll::Pending => Poll::Pending,
    }
}

/// Writes as much of the buffer as the socket takes now, then flushes (a TLS stream may
/// hold records back). Returns whether anything was written; when the socket is full, the
/// context is woken once it has room.
fn write_some(
    socket: &mut Box<dyn Socket>,
    write_buffer: &mut BytesMut,
    unflushed: &mut bool,
    cx: &mut Context<'_>,
) -> io::Result<bool> {
    let mut wrote = false;
    while !write_buffer.is_empty() {
        match Pin::new(&mut **socket).poll_write(cx, write_buffer) {
            Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
            Poll::Ready(Ok(written)) => {
                write_buffer.advance(written);
                wrote = true;
                *unflushed = true;
            }
            Poll::Ready(Err(e)) => return Err(e),
            Poll::Pending => break,
        }
    }
    if write_buffer.is_empty() && *unflushed {
        match Pin::new(&mut **socket).poll_flush(cx) {
            Poll::Ready(Ok(())) => *unflushed = false,
            Poll::Ready(Err(e)) => return Err(e),
            Poll::Pending => {}
        }
    }
    Ok(wrote)
}
