//! MQTT 3.1.1 for the connection: rumqttc's 3.1.1 codec and state machine, and its events
//! turned into `Inbound`.

use super::connection::{same_in_both_versions, Accepted, RequestKind, Wire};
use super::{ConnectionOptions, Inbound, LinkError, LinkErrorKind, INCOMING_READ_LIMIT};
use bytes::BytesMut;
use rumqttc::mqttbytes::Error as CodecError;
use rumqttc::{
    ConnectReturnCode, Event, Login, MqttState, Packet, Request, StateError, SubscribeReasonCode,
};

pub struct V4;

impl Wire for V4 {
    type State = MqttState;
    type Request = Request;
    type Packet = Packet;

    same_in_both_versions!();

    fn connect_packet(options: &ConnectionOptions) -> Packet {
        let mut connect = rumqttc::Connect::new(options.client_id.as_str());
        connect.keep_alive = u16::try_from(options.keepalive.as_secs()).unwrap_or(u16::MAX);
        // 3.1.1 has no session expiry: any asks for a session the broker keeps.
        connect.clean_session = options.session_expiry.is_zero();
        connect.login = options
            .username
            .as_ref()
            .map(|user| Login::new(user.as_str(), options.password.clone().unwrap_or_default()));
        Packet::Connect(connect)
    }

    fn read_limit(options: &ConnectionOptions) -> usize {
        // 3.1.1 cannot tell the broker our limit, and a larger packet ends the connection,
        // which a persistent session then redelivers on every reconnect: read up to a
        // generous bound instead, and let the caller drop (and count) what exceeds
        // `max_packet_size`.
        options.max_packet_size.max(INCOMING_READ_LIMIT)
    }

    fn read(buffer: &mut BytesMut, limit: usize) -> Result<Option<Packet>, LinkError> {
        match Packet::read(buffer, limit) {
            Ok(packet) => Ok(Some(packet)),
            Err(CodecError::InsufficientBytes(_)) => Ok(None),
            Err(e) => Err(LinkError::other(format!(
                "a bad packet from the broker: {e}"
            ))),
        }
    }

    fn write(packet: &Packet, buffer: &mut BytesMut, limit: usize) -> Result<(), LinkError> {
        packet
            .write(buffer, limit)
            .map(drop)
            .map_err(|e| LinkError::other(format!("cannot encode a packet: {e}")))
    }

    fn accept(state: &mut MqttState, packet: Packet) -> Result<Accepted, LinkError> {
        let Packet::ConnAck(ack) = packet else {
            return Err(LinkError::other(format!(
                "the broker answered CONNECT with {packet:?}"
            )));
        };
        if ack.code != ConnectReturnCode::Success {
            return Err(LinkError::of(
                LinkErrorKind::Refused,
                format!("the broker refused the connection: {:?}", ack.code),
            ));
        }
        let session_present = ack.session_present;
        state
            .events
            .push_back(Event::Incoming(Packet::ConnAck(ack)));
        Ok(Accepted {
            session_present,
            receive_maximum: None,
            max_packet_size: None,
            server_keep_alive: None,
        })
    }

    fn outgoing(state: &mut MqttState, request: Request) -> Result<Option<Packet>, LinkError> {
        match request {
            Request::Publish(_)
            | Request::Subscribe(_)
            | Request::Unsubscribe(_)
            | Request::Disconnect(_)
            | Request::PubAck(_) => state.handle_outgoing_packet(request).map_err(state_error),
            other => Err(LinkError::other(format!("cannot send {other:?}"))),
        }
    }

    fn ping(state: &mut MqttState) -> Result<Option<Packet>, LinkError> {
        state
            .handle_outgoing_packet(Request::PingReq(rumqttc::PingReq))
            .map_err(state_error)
    }

    fn next_event(state: &mut MqttState) -> Option<Inbound> {
        let event = state.events.pop_front()?;
        Some(match event {
            Event::Incoming(packet) => match packet {
                Packet::ConnAck(ack) => Inbound::Connected {
                    session_present: ack.session_present,
                    max_packet_size: None,
                    shared_subscriptions: None,
                },
                Packet::Publish(publish) => Inbound::Message {
                    topic: publish.topic,
                    payload: publish.payload,
                    correlation_data: None,
                    response_topic: None,
                    user_properties: Vec::new(),
                    message_expiry: None,
                },
                Packet::PubAck(ack) => Inbound::PubAck {
                    packet_id: ack.pkid,
                    reason: 0,
                },
                Packet::SubAck(ack) => Inbound::SubAck {
                    packet_id: ack.pkid,
                    granted: ack
                        .return_codes
                        .iter()
                        .all(|c| matches!(c, SubscribeReasonCode::Success(_))),
                },
                Packet::UnsubAck(_) => Inbound::UnsubAck,
                _ => Inbound::Other,
            },
            Event::Outgoing(outgoing) => super::outgoing_event(outgoing),
        })
    }

    fn kind(request: &Request) -> RequestKind {
        match request {
            Request::Publish(publish) => {
                RequestKind::Publish((publish.pkid != 0).then_some(publish.pkid))
            }
            Request::Subscribe(_) | Request::Unsubscribe(_) => RequestKind::Subscription,
            Request::PubAck(_) => RequestKind::Ack,
            Request::Disconnect(_) => RequestKind::Disconnect,
            _ => RequestKind::Other,
        }
    }
}

/// MQTT 3.1.1 has no DISCONNECT from the broker: it just closes the connection.
fn server_disconnect(_: &StateError) -> Option<LinkError> {
    None
}

same_in_both_versions!(state_error);
