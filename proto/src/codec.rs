//! The codec of every generated client and server: prost encoding, plus validation of each
//! decoded *request* against its `buf.validate` rules before a handler sees it. A service
//! therefore cannot forget to validate, and a bad request fails with `INVALID_ARGUMENT` naming
//! the fields. Responses are not validated: they come from our own code.

use std::collections::HashSet;
use std::marker::PhantomData;
use std::sync::LazyLock;

use bytes::Buf;
use prost::{Message, Name};
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::ProstEncoder;

use crate::validate::{descriptors, invalid_argument, validate_encoded};

/// A prost codec that validates requests.
#[derive(Debug, Clone, Copy)]
pub struct ValidatingCodec<E, D>(PhantomData<(E, D)>);

impl<E, D> Default for ValidatingCodec<E, D> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<E, D> Codec for ValidatingCodec<E, D>
where
    E: Message + Send + 'static,
    D: Message + Default + Name + Send + 'static,
{
    type Encode = E;
    type Decode = D;
    type Encoder = ProstEncoder<E>;
    type Decoder = ValidatingDecoder<D>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ValidatingDecoder(PhantomData)
    }
}

/// Decodes one message and, if it is some method's input type, validates it.
#[derive(Debug)]
pub struct ValidatingDecoder<D>(PhantomData<D>);

impl<D: Message + Default + Name> Decoder for ValidatingDecoder<D> {
    type Item = D;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<D>, Status> {
        let bytes = src.copy_to_bytes(src.remaining());
        let name = D::full_name();
        if is_request(&name) {
            let descriptor = descriptors()
                .get_message_by_name(&name)
                .ok_or_else(|| Status::internal(format!("no descriptor for {name}")))?;
            validate_encoded(descriptor, &bytes)
                .map_err(|violations| invalid_argument(&violations))?;
        }
        D::decode(bytes)
            .map(Some)
            .map_err(|error| Status::invalid_argument(format!("malformed {name}: {error}")))
    }
}

/// Whether `message` (a full name) is the input of some RPC.
fn is_request(message: &str) -> bool {
    static INPUTS: LazyLock<HashSet<String>> = LazyLock::new(|| {
        descriptors()
            .services()
            .flat_map(|service| {
                service
                    .methods()
                    .map(|method| method.input().full_name().to_owned())
                    .collect::<Vec<_>>()
            })
            .collect()
    });
    INPUTS.contains(message)
}
