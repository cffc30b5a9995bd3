//! Calling a service's method with a message known only by its descriptor: a tonic client with
//! a codec of dynamic messages, over the platform's peer channels (which carry the request id,
//! `traceparent` and deadline). Unary methods answer one message; server-streaming ones a
//! [`Streaming`] of them. A failed call reads to the client as `failure` says, whether it
//! failed before an answer (REST) or during a stream (SSE).

use std::collections::HashMap;
use std::str::FromStr;

use bytes::Buf;
use http::uri::PathAndQuery;
use prost::Message as _;
use prost_reflect::{DynamicMessage, MessageDescriptor};
use shopmesh_kit::grpc::PeerChannel;
use tonic::client::Grpc;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::metadata::MetadataMap;
use tonic::{Code, Status, Streaming};
use tonic_types::StatusExt;

use crate::routes::Route;

/// Encodes and decodes dynamic messages; decodes as `output`.
#[derive(Debug, Clone)]
pub struct DynamicCodec {
    output: MessageDescriptor,
}

impl Codec for DynamicCodec {
    type Encode = DynamicMessage;
    type Decode = DynamicMessage;
    type Encoder = DynamicEncoder;
    type Decoder = DynamicDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        DynamicEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        DynamicDecoder(self.output.clone())
    }
}

#[derive(Debug)]
pub struct DynamicEncoder;

impl Encoder for DynamicEncoder {
    type Item = DynamicMessage;
    type Error = Status;

    fn encode(&mut self, item: DynamicMessage, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.reserve(item.encoded_len());
        item.encode(dst)
            .map_err(|e| Status::internal(format!("encoding the request: {e}")))
    }
}

#[derive(Debug)]
pub struct DynamicDecoder(MessageDescriptor);

impl Decoder for DynamicDecoder {
    type Item = DynamicMessage;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<DynamicMessage>, Status> {
        let bytes = src.copy_to_bytes(src.remaining());
        DynamicMessage::decode(self.0.clone(), bytes)
            .map(Some)
            .map_err(|e| Status::internal(format!("decoding the response: {e}")))
    }
}

/// A channel per service the edge routes to.
#[derive(Debug, Clone, Default)]
pub struct Upstreams(HashMap<String, PeerChannel>);

impl Upstreams {
    pub fn new(channels: HashMap<String, PeerChannel>) -> Self {
        Self(channels)
    }

    /// Calls `route`'s unary method with `message` and the forwarded `metadata`.
    pub async fn call(
        &self,
        route: &Route,
        message: DynamicMessage,
        metadata: MetadataMap,
    ) -> Result<DynamicMessage, Status> {
        let (mut client, path, codec) = self.client(route).await?;
        let request = request(message, metadata);
        Ok(client.unary(request, path, codec).await?.into_inner())
    }

    /// Calls `route`'s server-streaming method with `message` and the forwarded `metadata`.
    /// Resolves once the service has answered with its headers (or failed); the messages follow
    /// on the returned stream. Dropping the stream cancels the call.
    pub async fn server_streaming(
        &self,
        route: &Route,
        message: DynamicMessage,
        metadata: MetadataMap,
    ) -> Result<Streaming<DynamicMessage>, Status> {
        let (mut client, path, codec) = self.client(route).await?;
        let request = request(message, metadata);
        Ok(client
            .server_streaming(request, path, codec)
            .await?
            .into_inner())
    }

    /// A ready client on `route`'s service, the method path and a codec for its output.
    async fn client(
        &self,
        route: &Route,
    ) -> Result<(Grpc<PeerChannel>, PathAndQuery, DynamicCodec), Status> {
        let channel = self.0.get(&route.service).cloned().ok_or_else(|| {
            Status::new(
                Code::Unavailable,
                format!("no upstream for service {}", route.service),
            )
        })?;
        let mut client = Grpc::new(channel);
        client
            .ready()
            .await
            .map_err(|e| Status::unavailable(format!("{} is unavailable: {e}", route.service)))?;
        let path = PathAndQuery::from_str(&route.grpc_path)
            .map_err(|e| Status::internal(format!("bad method path: {e}")))?;
        let codec = DynamicCodec {
            output: route.method.output(),
        };
        Ok((client, path, codec))
    }
}

/// A failed call as the client should see it: the service's own status, or 503/504 when the
/// service could not be reached in time.
pub(crate) fn failure(route: &Route, status: Status) -> Status {
    match status.code() {
        Code::Unavailable | Code::Unknown if status.get_error_details().error_info().is_none() => {
            tracing::warn!(service = route.service, error = %status.message(), "upstream unavailable");
            Status::unavailable(format!("{} is unavailable, try again", route.service))
        }
        Code::Cancelled | Code::DeadlineExceeded
            if status.get_error_details().error_info().is_none() =>
        {
            Status::deadline_exceeded(format!("{} did not answer in time", route.service))
        }
        _ => status,
    }
}

fn request(message: DynamicMessage, metadata: MetadataMap) -> tonic::Request<DynamicMessage> {
    let mut request = tonic::Request::new(message);
    *request.metadata_mut() = metadata;
    request
}
