//! A gRPC target: a unary or server-streaming method of a shopmesh service, named as
//! `package.Service/Method` and looked up in the descriptor set of `shopmesh-proto`, with the
//! request given as JSON (proto3 JSON mapping).
//!
//! The JSON is parsed into a `DynamicMessage` against the method's input type and encoded once,
//! before the run; every request then sends those bytes through [`EncodedCodec`]. Answers are
//! read in full but not decoded: decoding is the client's cost, not the server's, and on a
//! shared machine it would take CPU from the server being measured.

use std::str::FromStr as _;

use bytes::{Buf as _, BufMut as _, Bytes};
use http::uri::PathAndQuery;
use prost_reflect::{DynamicMessage, MethodDescriptor};
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::metadata::MetadataMap;
use tonic::transport::{Channel, Endpoint};

use crate::engine::{ErrorKind, Failure, Target};
use crate::error::Error;
use crate::http::parse_header;

/// What to call, as the command line gives it.
#[derive(Debug, Clone)]
pub struct GrpcSpec {
    pub url: String,
    /// `package.Service/Method`.
    pub method: String,
    /// The request message in proto3 JSON.
    pub request: String,
    /// `Name: value` lines, sent as metadata.
    pub headers: Vec<String>,
    /// The `:authority` of every call, when it is not the url's host: a mesh sidecar routes by
    /// it (`--authority catalog`).
    pub authority: Option<String>,
}

/// One method with one request, over and over.
#[derive(Debug)]
pub struct GrpcTarget {
    url: String,
    endpoint: Endpoint,
    path: PathAndQuery,
    request: Bytes,
    metadata: MetadataMap,
    server_streaming: bool,
}

/// The method named `package.Service/Method` in the shopmesh descriptor set.
pub fn find_method(name: &str) -> Result<MethodDescriptor, Error> {
    let unknown = || Error::UnknownMethod(name.to_owned());
    let (service, method) = name.split_once('/').ok_or_else(unknown)?;
    shopmesh_proto::validate::descriptors()
        .get_service_by_name(service)
        .and_then(|service| service.methods().find(|m| m.name() == method))
        .ok_or_else(unknown)
}

/// `json` as the wire encoding of `method`'s input message.
pub fn encode_request(method: &MethodDescriptor, json: &str) -> Result<Bytes, Error> {
    let invalid = |reason: String| Error::Request {
        method: method.full_name().to_owned(),
        reason,
    };
    let mut deserializer = serde_json::Deserializer::from_str(json);
    let message = DynamicMessage::deserialize(method.input(), &mut deserializer)
        .map_err(|e| invalid(e.to_string()))?;
    deserializer.end().map_err(|e| invalid(e.to_string()))?;
    Ok(Bytes::from(prost::Message::encode_to_vec(&message)))
}

impl GrpcTarget {
    /// Finds the method, encodes the request and checks the url; connects only in the run.
    pub fn new(spec: GrpcSpec) -> Result<Self, Error> {
        let method = find_method(&spec.method)?;
        if method.is_client_streaming() {
            return Err(Error::ClientStreaming(spec.method));
        }
        let request = encode_request(&method, &spec.request)?;
        let url_error = |reason: String| Error::Url {
            url: spec.url.clone(),
            reason,
        };
        if !spec.url.starts_with("http://") {
            return Err(url_error(
                "the url must start with http:// (TLS is not supported yet)".to_owned(),
            ));
        }
        let mut endpoint = Endpoint::from_shared(spec.url.clone())
            .map_err(|e| url_error(e.to_string()))?
            .tcp_nodelay(true);
        if let Some(authority) = &spec.authority {
            let origin = format!("http://{authority}")
                .parse()
                .map_err(|_| url_error(format!("{authority:?} is not a valid authority")))?;
            endpoint = endpoint.origin(origin);
        }
        let path = PathAndQuery::from_str(&format!(
            "/{}/{}",
            method.parent_service().full_name(),
            method.name()
        ))
        .map_err(|e| Error::UnknownMethod(format!("{}: {e}", spec.method)))?;
        let mut headers = http::HeaderMap::new();
        for line in &spec.headers {
            let (name, value) = parse_header(line)?;
            headers.append(name, value);
        }
        Ok(Self {
            url: spec.url,
            endpoint,
            path,
            request,
            metadata: MetadataMap::from_headers(headers),
            server_streaming: method.is_server_streaming(),
        })
    }
}

fn grpc_failure(status: Status) -> Failure {
    Failure {
        kind: ErrorKind::Grpc(status.code()),
        broken: false,
    }
}

impl Target for GrpcTarget {
    /// One HTTP/2 connection; tonic reopens it by itself when it drops.
    type Conn = Channel;

    fn multiplexed(&self) -> bool {
        true
    }

    fn describe(&self) -> String {
        format!("{}{}", self.url.trim_end_matches('/'), self.path)
    }

    async fn connect(&self) -> Result<Channel, String> {
        self.endpoint.connect().await.map_err(|e| {
            let mut reason = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                reason = format!("{reason}: {cause}");
                source = cause.source();
            }
            reason
        })
    }

    fn usable(&self, _: &Channel) -> bool {
        true
    }

    async fn call(&self, conn: &Channel) -> Result<(), Failure> {
        let mut client = tonic::client::Grpc::new(conn.clone());
        client.ready().await.map_err(|_| Failure {
            kind: ErrorKind::Transport,
            broken: false,
        })?;
        let mut request = tonic::Request::new(self.request.clone());
        *request.metadata_mut() = self.metadata.clone();
        if self.server_streaming {
            let mut stream = client
                .server_streaming(request, self.path.clone(), EncodedCodec)
                .await
                .map_err(grpc_failure)?
                .into_inner();
            while stream.message().await.map_err(grpc_failure)?.is_some() {}
        } else {
            client
                .unary(request, self.path.clone(), EncodedCodec)
                .await
                .map_err(grpc_failure)?;
        }
        Ok(())
    }
}

/// Sends messages already encoded (by prost-reflect, before the run) and hands answers back as
/// their bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct EncodedCodec;

impl Codec for EncodedCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = EncodedCodec;
    type Decoder = EncodedCodec;

    fn encoder(&mut self) -> Self::Encoder {
        EncodedCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        EncodedCodec
    }
}

impl Encoder for EncodedCodec {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for EncodedCodec {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;
    use shopmesh_proto::shopmesh::users::v1::GetUserRequest;

    #[test]
    fn methods_are_found_by_service_and_name() {
        let method = find_method("shopmesh.users.v1.UserService/GetUser").unwrap();
        assert_eq!(method.full_name(), "shopmesh.users.v1.UserService.GetUser");
        assert!(!method.is_client_streaming());
        for unknown in [
            "shopmesh.users.v1.UserService.GetUser",
            "shopmesh.users.v1.UserService/Nope",
            "shopmesh.nope.v1.Nope/GetUser",
            "",
        ] {
            assert!(
                matches!(find_method(unknown), Err(Error::UnknownMethod(_))),
                "{unknown}"
            );
        }
    }

    #[test]
    fn json_requests_are_encoded_as_the_input_message() {
        let method = find_method("shopmesh.users.v1.UserService/GetUser").unwrap();
        let id = "0190a4c6-2b4e-7c1a-9f3e-0123456789ab";
        let bytes = encode_request(&method, &format!(r#"{{"id": "{id}"}}"#)).unwrap();
        let decoded = GetUserRequest::decode(bytes).unwrap();
        assert_eq!(decoded.id, id);
    }

    #[test]
    fn bad_json_requests_are_refused_with_the_reason() {
        let method = find_method("shopmesh.users.v1.UserService/GetUser").unwrap();
        for (json, reason) in [
            (r#"{"nope": 1}"#, "nope"),
            (r#"{"id": 5}"#, "id"),
            (r#"{"id": "a"} trailing"#, "trailing"),
        ] {
            match encode_request(&method, json) {
                Err(Error::Request {
                    method,
                    reason: why,
                }) => {
                    assert_eq!(method, "shopmesh.users.v1.UserService.GetUser");
                    assert!(
                        !why.is_empty(),
                        "{json}: no reason given (expected {reason})"
                    );
                }
                other => panic!("{json}: {other:?}"),
            }
        }
    }

    #[test]
    fn the_target_calls_the_method_path_with_metadata() {
        let target = GrpcTarget::new(GrpcSpec {
            url: "http://127.0.0.1:50051".to_owned(),
            method: "shopmesh.users.v1.UserService/GetUser".to_owned(),
            request: "{}".to_owned(),
            headers: vec!["authorization: Bearer t".to_owned()],
            authority: None,
        })
        .unwrap();
        assert_eq!(
            target.path.as_str(),
            "/shopmesh.users.v1.UserService/GetUser"
        );
        assert_eq!(target.metadata.get("authorization").unwrap(), "Bearer t");
        assert!(target.request.is_empty());
        assert!(!target.server_streaming);
        assert_eq!(
            target.describe(),
            "http://127.0.0.1:50051/shopmesh.users.v1.UserService/GetUser"
        );
        assert!(matches!(
            GrpcTarget::new(GrpcSpec {
                url: "https://127.0.0.1:50051".to_owned(),
                method: "shopmesh.users.v1.UserService/GetUser".to_owned(),
                request: "{}".to_owned(),
                headers: vec![],
                authority: None,
            }),
            Err(Error::Url { .. })
        ));
    }
}
