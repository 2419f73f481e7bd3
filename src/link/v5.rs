//! MQTT 5 for the connection: rumqttc's MQTT 5 codec and state machine, the CONNECT
//! properties we ask for, and its events (with Response Topic and Correlation Data)
//! turned into `Inbound`.

use super::connection::{same_in_both_versions, Accepted, RequestKind, Wire};
use super::{ConnectionOptions, Inbound, LinkError, LinkErrorKind};
use bytes::BytesMut;
use rumqttc::v5::mqttbytes::v5::{
    ConnectProperties, ConnectReturnCode, DisconnectProperties, DisconnectReasonCode, Login,
    Packet, PubAckReason, SubscribeReasonCode,
};
use rumqttc::v5::mqttbytes::Error as CodecError;
use rumqttc::v5::{Event, MqttState, Request, StateError};

pub struct V5;

impl Wire for V5 {
    type State = MqttState;
    type Request = Request;
    type Packet = Packet;

    same_in_both_versions!();

    fn connect_packet(options: &ConnectionOptions) -> Packet {
        let mut properties = ConnectProperties::new();
        properties.max_packet_size =
            Some(u32::try_from(options.max_packet_size).unwrap_or(u32::MAX));
        if !options.session_expiry.is_zero() {
            let seconds = u32::try_from(options.session_expiry.as_secs()).unwrap_or(u32::MAX);
            properties.session_expiry_interval = Some(seconds);
        }
        let connect = rumqttc::v5::mqttbytes::v5::Connect {
            client_id: options.client_id.clone(),
            keep_alive: u16::try_from(options.keepalive.as_secs()).unwrap_or(u16::MAX),
            clean_start: options.session_expiry.is_zero(),
            properties: Some(properties),
        };
        let login = options
            .username
            .as_ref()
            .map(|user| Login::new(user.as_str(), options.password.clone().unwrap_or_default()));
        Packet::Connect(connect, None, login)
    }

    fn read_limit(options: &ConnectionOptions) -> usize {
        // The broker knows our limit from CONNECT and drops what exceeds it.
        options.max_packet_size
    }

    fn read(buffer: &mut BytesMut, limit: usize) -> Result<Option<Packet>, LinkError> {
        match Packet::read(buffer, Some(u32::try_from(limit).unwrap_or(u32::MAX))) {
            Ok(packet) => Ok(Some(packet)),
            Err(CodecError::InsufficientBytes(_)) => Ok(None),
            Err(e) => Err(LinkError::other(format!(
                "a bad packet from the broker: {e}"
            ))),
        }
    }

    fn write(packet: &Packet, buffer: &mut BytesMut, limit: usize) -> Result<(), LinkError> {
        let limit = u32::try_from(limit).ok();
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
        let properties = ack.properties.as_ref();
        let accepted = Accepted {
            session_present: ack.session_present,
            receive_maximum: properties.and_then(|p| p.receive_max),
            max_packet_size: properties.and_then(|p| p.max_packet_size),
            server_keep_alive: properties.and_then(|p| p.server_keep_alive),
        };
        // The state machine learns the broker's limits, and queues the CONNACK's event.
        state
            .handle_incoming_packet(Packet::ConnAck(ack))
            .map_err(state_error)?;
        Ok(accepted)
    }

    fn outgoing(state: &mut MqttState, request: Request) -> Result<Option<Packet>, LinkError> {
        match request {
            Request::Publish(_)
            | Request::Subscribe(_)
            | Request::Unsubscribe(_)
            | Request::PubAck(_) => state.handle_outgoing_packet(request).map_err(state_error),
            Request::Disconnect => {
                let packet = state.handle_outgoing_packet(request).map_err(state_error)?;
                Ok(packet.map(without_session))
            }
            other => Err(LinkError::other(format!("cannot send {other:?}"))),
        }
    }

    fn ping(state: &mut MqttState) -> Result<Option<Packet>, LinkError> {
        state
            .handle_outgoing_packet(Request::PingReq)
            .map_err(state_error)
    }

    fn next_event(state: &mut MqttState) -> Option<Inbound> {
        let event = state.events.pop_front()?;
        Some(match event {
            Event::Incoming(packet) => match packet {
                Packet::ConnAck(ack) => {
                    let properties = ack.properties.as_ref();
                    Inbound::Connected {
                        session_present: ack.session_present,
                        max_packet_size: properties.and_then(|p| p.max_packet_size),
                        shared_subscriptions: properties
                            .and_then(|p| p.shared_subscription_available)
                            .map(|available| available != 0),
                    }
                }
                Packet::Publish(publish) => {
                    let properties = publish.properties.unwrap_or_default();
                    Inbound::Message {
                        topic: String::from_utf8_lossy(&publish.topic).into_owned(),
                        payload: publish.payload,
                        correlation_data: properties.correlation_data,
                        response_topic: properties.response_topic,
                        user_properties: properties.user_properties,
                        message_expiry: properties.message_expiry_interval,
                    }
                }
                Packet::PubAck(ack) => Inbound::PubAck {
                    packet_id: ack.pkid,
                    reason: puback_code(ack.reason),
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
            Request::Disconnect => RequestKind::Disconnect,
            _ => RequestKind::Other,
        }
    }
}

/// A DISCONNECT that ends the session too (Session Expiry Interval 0): whoever closes on
/// purpose has no use for it, and a session left behind would keep a shared subscription's
/// share routed to a member that is gone, and queue requests for it until it expired.
fn without_session(packet: Packet) -> Packet {
    match packet {
        Packet::Disconnect(mut disconnect) => {
            disconnect.properties = Some(DisconnectProperties {
                session_expiry_interval: Some(0),
                reason_string: None,
                user_properties: Vec::new(),
                server_reference: None,
            });
            Packet::Disconnect(disconnect)
        }
        other => other,
    }
}

fn puback_code(reason: PubAckReason) -> u8 {
    use PubAckReason as R;
    match reason {
        R::Success => 0,
        R::NoMatchingSubscribers => 16,
        R::UnspecifiedError => 128,
        R::ImplementationSpecificError => 131,
        R::NotAuthorized => 135,
        R::TopicNameInvalid => 144,
        R::PacketIdentifierInUse => 145,
        R::QuotaExceeded => 151,
        R::PayloadFormatInvalid => 153,
    }
}

/// A DISCONNECT from the broker, as the `LinkError` that says why it closed the connection.
fn server_disconnect(error: &StateError) -> Option<LinkError> {
    let StateError::ServerDisconnect {
        reason_code,
        reason_string,
    } = error
    else {
        return None;
    };
    let (kind, why) = match reason_code {
        DisconnectReasonCode::SessionTakenOver => (
            LinkErrorKind::TakenOver,
            "session taken over by another connection with the same client id",
        ),
        _ => (LinkErrorKind::Closed, "the broker disconnected"),
    };
    let said = reason_string
        .as_deref()
        .map_or(String::new(), |text| format!(": {text}"));
    Some(LinkError::of(
        kind,
        format!("{why} ({reason_code:?}){said}"),
    ))
}

same_in_both_versions!(state_error);
