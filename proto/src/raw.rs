//! Messages that carry pre-encoded protobuf through tonic, and the raw v2 services built on them.
//!
//! The raw services have the same package, service and method names as the generated ones, so the
//! same paths on the wire (`/loggregator.v2.Ingress/BatchSender`); only the Rust types differ:
//! - [`RawBatch`] decodes a whole `EnvelopeBatch` as one `Bytes` (a slice of the receive buffer;
//!   the hot paths read it through [`crate::stream`] instead of tonic's decoder, which copies),
//!   for [`crate::scan::BatchScanner`] to walk.
//! - [`EncodedBatch`] encodes an `EnvelopeBatch` by writing each pre-encoded envelope behind its field
//!   key and length, straight into tonic's send buffer: no envelope is ever re-encoded.
//! - [`RawBytes`] is one whole message, undecoded (an `Envelope` on the `Sender` stream).
//!
//! [`server`] holds the raw Ingress and Egress servers (receive [`RawBatch`], send [`EncodedBatch`]);
//! [`client`] the raw clients (send [`EncodedBatch`], receive [`RawBatch`]).

use bytes::{Buf, BufMut, Bytes};
use prost::encoding::{skip_field, DecodeContext, WireType};
use prost::DecodeError;

use crate::wire::{put_varint, varint_len};

/// Key of `EnvelopeBatch.batch` (field 1, length-delimited).
const BATCH_FIELD_KEY: u8 = (1 << 3) | 2;

/// One whole encoded message, kept as bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawBytes(pub Bytes);

/// A whole encoded `EnvelopeBatch`, kept as bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawBatch(pub Bytes);

impl RawBatch {
    pub fn scan(&self) -> crate::scan::BatchScanner {
        crate::scan::BatchScanner::new(self.0.clone())
    }
}

macro_rules! impl_whole_bytes_message {
    ($ty:ty) => {
        impl prost::Message for $ty {
            fn encode_raw(&self, buf: &mut impl BufMut) {
                buf.put_slice(&self.0);
            }

            fn merge_field(
                &mut self,
                tag: u32,
                wire_type: WireType,
                buf: &mut impl Buf,
                ctx: DecodeContext,
            ) -> Result<(), DecodeError> {
                // Unreachable through `merge`, which is overridden below; skipping keeps it total.
                skip_field(wire_type, tag, buf, ctx)
            }

            fn encoded_len(&self) -> usize {
                self.0.len()
            }

            fn clear(&mut self) {
                self.0 = Bytes::new();
            }

            /// Takes the whole input as one slice: with tonic's receive buffer that is a reference
            /// count, not a copy. Validation is the scanner's job.
            fn merge(&mut self, mut buf: impl Buf) -> Result<(), DecodeError> {
                self.0 = buf.copy_to_bytes(buf.remaining());
                Ok(())
            }
        }
    };
}

impl_whole_bytes_message!(RawBytes);
impl_whole_bytes_message!(RawBatch);

/// An `EnvelopeBatch` assembled from pre-encoded envelopes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EncodedBatch {
    /// Each element is one encoded `Envelope` (without key or length).
    pub envelopes: Vec<Bytes>,
}

impl EncodedBatch {
    pub fn with_capacity(capacity: usize) -> Self {
        Self { envelopes: Vec::with_capacity(capacity) }
    }

    pub fn push(&mut self, envelope: Bytes) {
        self.envelopes.push(envelope);
    }

    pub fn len(&self) -> usize {
        self.envelopes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.envelopes.is_empty()
    }

    /// The whole batch as one contiguous buffer (one copy of each envelope).
    pub fn to_bytes(&self) -> Bytes {
        let mut out = Vec::with_capacity(prost::Message::encoded_len(self));
        prost::Message::encode_raw(self, &mut out);
        Bytes::from(out)
    }
}

impl prost::Message for EncodedBatch {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        for envelope in &self.envelopes {
            buf.put_u8(BATCH_FIELD_KEY);
            put_varint(buf, envelope.len() as u64);
            buf.put_slice(envelope);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        if tag != 1 {
            return skip_field(wire_type, tag, buf, ctx);
        }
        // `Bytes` decoding is `copy_to_bytes`: a slice of tonic's receive buffer, not a copy.
        let mut envelope = Bytes::new();
        prost::encoding::bytes::merge(wire_type, &mut envelope, buf, ctx)?;
        self.envelopes.push(envelope);
        Ok(())
    }

    fn encoded_len(&self) -> usize {
        self.envelopes.iter().map(|e| 1 + varint_len(e.len() as u64) + e.len()).sum()
    }

    fn clear(&mut self) {
        self.envelopes.clear();
    }
}

/// A `logcache.v1.ReadResponse` whose batch is assembled from pre-encoded envelopes: what the
/// log-cache's gRPC `Read` sends from its store without decoding a payload. Encodes as prost encodes
/// a `ReadResponse` with `envelopes` set (present even when empty). Only ever sent, never decoded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EncodedReadResponse {
    pub batch: EncodedBatch,
}

impl prost::Message for EncodedReadResponse {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_u8(BATCH_FIELD_KEY);
        put_varint(buf, prost::Message::encoded_len(&self.batch) as u64);
        prost::Message::encode_raw(&self.batch, buf);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        if tag != 1 {
            return skip_field(wire_type, tag, buf, ctx);
        }
        prost::encoding::message::merge(wire_type, &mut self.batch, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        let inner = prost::Message::encoded_len(&self.batch);
        1 + varint_len(inner as u64) + inner
    }

    fn clear(&mut self) {
        prost::Message::clear(&mut self.batch);
    }
}

/// `SendRequest.local_only` (field 2) as prost writes it: only when true.
fn encode_local_only(local_only: bool, buf: &mut impl BufMut) {
    if local_only {
        prost::encoding::bool::encode(2, &local_only, buf);
    }
}

/// The encoded length of `SendRequest.local_only`: key and value, or nothing when false.
fn local_only_len(local_only: bool) -> usize {
    if local_only {
        2
    } else {
        0
    }
}

/// A `logcache.v1.SendRequest` as received: its `EnvelopeBatch` kept as bytes (a slice of the
/// receive buffer) for [`crate::scan::BatchScanner`], never decoded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawSendRequest {
    /// The encoded `EnvelopeBatch` (field 1), empty when absent.
    pub envelopes: Bytes,
    pub local_only: bool,
}

impl prost::Message for RawSendRequest {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_u8(BATCH_FIELD_KEY);
        put_varint(buf, self.envelopes.len() as u64);
        buf.put_slice(&self.envelopes);
        encode_local_only(self.local_only, buf);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        match tag {
            1 => {
                let mut batch = Bytes::new();
                prost::encoding::bytes::merge(wire_type, &mut batch, buf, ctx)?;
                // A message field seen twice merges, and for a batch (one repeated field) merging
                // is appending: the two encodings concatenated. Rare, so it may copy.
                self.envelopes =
                    if self.envelopes.is_empty() { batch } else { [&self.envelopes[..], &batch].concat().into() };
                Ok(())
            }
            2 => prost::encoding::bool::merge(wire_type, &mut self.local_only, buf, ctx),
            _ => skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        1 + varint_len(self.envelopes.len() as u64) + self.envelopes.len() + local_only_len(self.local_only)
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

/// A `logcache.v1.SendRequest` assembled from pre-encoded envelopes: what a log-cache node sends
/// to a source's owner node. Encodes as prost encodes a `SendRequest` with `envelopes` set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EncodedSendRequest {
    pub batch: EncodedBatch,
    pub local_only: bool,
}

impl prost::Message for EncodedSendRequest {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_u8(BATCH_FIELD_KEY);
        put_varint(buf, prost::Message::encoded_len(&self.batch) as u64);
        prost::Message::encode_raw(&self.batch, buf);
        encode_local_only(self.local_only, buf);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        match tag {
            1 => prost::encoding::message::merge(wire_type, &mut self.batch, buf, ctx),
            2 => prost::encoding::bool::merge(wire_type, &mut self.local_only, buf, ctx),
            _ => skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        let inner = prost::Message::encoded_len(&self.batch);
        1 + varint_len(inner as u64) + inner + local_only_len(self.local_only)
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

/// The codec of the raw services: prost's decoder, and an encoder that reserves a message's whole
/// encoded length in tonic's send buffer before writing it.
///
/// prost's own encoder writes field by field into a buffer that starts at 8 KiB and grows by
/// doubling, so a 35 KB batch was copied three more times while it grew (`realloc` was 1.5 % of the
/// machine at 400k envelopes/s); its length is known beforehand, so one allocation will do.
#[derive(Debug)]
pub struct RawCodec<T, U>(std::marker::PhantomData<(T, U)>);

impl<T, U> Default for RawCodec<T, U> {
    fn default() -> Self {
        Self(std::marker::PhantomData)
    }
}

impl<T, U> tonic::codec::Codec for RawCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ReservingEncoder<T>;
    type Decoder = tonic_prost::ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ReservingEncoder(std::marker::PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        tonic_prost::ProstDecoder::default()
    }
}

/// See [`RawCodec`].
#[derive(Debug)]
pub struct ReservingEncoder<T>(std::marker::PhantomData<T>);

impl<T: prost::Message> tonic::codec::Encoder for ReservingEncoder<T> {
    type Item = T;
    type Error = tonic::Status;

    fn encode(&mut self, item: T, buf: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        buf.reserve(item.encoded_len());
        item.encode_raw(buf);
        Ok(())
    }
}

/// Raw v2 servers: decode [`RawBatch`], encode [`EncodedBatch`]; and log-cache's `Egress` server,
/// which encodes [`EncodedReadResponse`], and `Ingress` server, which decodes [`RawSendRequest`].
pub mod server {
    pub mod logcache_egress {
        include!(concat!(env!("OUT_DIR"), "/raw_server/logcache.v1.Egress.rs"));
    }
    pub mod logcache_ingress {
        include!(concat!(env!("OUT_DIR"), "/raw_server/logcache.v1.Ingress.rs"));
    }
    pub mod ingress {
        include!(concat!(env!("OUT_DIR"), "/raw_server/loggregator.v2.Ingress.rs"));
    }
    pub mod egress {
        include!(concat!(env!("OUT_DIR"), "/raw_server/loggregator.v2.Egress.rs"));
    }
}

/// Raw v2 clients: encode [`EncodedBatch`], decode [`RawBatch`]; and log-cache's `Ingress`
/// client, which encodes [`EncodedSendRequest`].
pub mod client {
    pub mod logcache_ingress {
        include!(concat!(env!("OUT_DIR"), "/raw_client/logcache.v1.Ingress.rs"));
    }
    pub mod ingress {
        include!(concat!(env!("OUT_DIR"), "/raw_client/loggregator.v2.Ingress.rs"));
    }
    pub mod egress {
        include!(concat!(env!("OUT_DIR"), "/raw_client/loggregator.v2.Egress.rs"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v2::{Envelope, EnvelopeBatch};
    use prost::Message;

    fn envelope(ts: i64, source: &str) -> Envelope {
        Envelope { timestamp: ts, source_id: source.into(), ..Default::default() }
    }

    #[test]
    fn encoded_batch_equals_prost_encoding_of_the_same_batch() {
        let envelopes = vec![envelope(1, "a"), envelope(2, &"b".repeat(300)), Envelope::default()];
        let mut batch = EncodedBatch::default();
        for e in &envelopes {
            batch.push(Bytes::from(e.encode_to_vec()));
        }
        let expected = EnvelopeBatch { batch: envelopes }.encode_to_vec();
        assert_eq!(batch.encoded_len(), expected.len());
        assert_eq!(batch.to_bytes(), Bytes::from(expected.clone()));
        let decoded = EncodedBatch::decode(&expected[..]).unwrap();
        assert_eq!(decoded, batch);
    }

    #[test]
    fn encoded_read_response_equals_prost_encoding_of_a_read_response() {
        use crate::logcache::v1::ReadResponse;
        for envelopes in [vec![], vec![envelope(1, "a"), envelope(2, &"b".repeat(200))]] {
            let mut encoded = EncodedReadResponse::default();
            for e in &envelopes {
                encoded.batch.push(Bytes::from(e.encode_to_vec()));
            }
            // An empty read still carries an (empty) batch, as the original's response does.
            let expected = ReadResponse { envelopes: Some(EnvelopeBatch { batch: envelopes }) };
            assert_eq!(encoded.encode_to_vec(), expected.encode_to_vec());
            assert_eq!(encoded.encoded_len(), expected.encoded_len());
            assert_eq!(ReadResponse::decode(&encoded.encode_to_vec()[..]).unwrap(), expected);
            assert_eq!(EncodedReadResponse::decode(&expected.encode_to_vec()[..]).unwrap(), encoded);
        }
    }

    #[test]
    fn send_requests_equal_prost_encoding_and_decoding_of_a_send_request() {
        use crate::logcache::v1::SendRequest;
        for (envelopes, local_only) in [(vec![], false), (vec![envelope(1, "a"), envelope(2, &"b".repeat(200))], true)]
        {
            let mut encoded = EncodedSendRequest { local_only, ..Default::default() };
            for e in &envelopes {
                encoded.batch.push(Bytes::from(e.encode_to_vec()));
            }
            let batch = EnvelopeBatch { batch: envelopes };
            let expected = SendRequest { envelopes: Some(batch.clone()), local_only };
            assert_eq!(encoded.encode_to_vec(), expected.encode_to_vec());
            assert_eq!(encoded.encoded_len(), expected.encoded_len());
            assert_eq!(EncodedSendRequest::decode(&expected.encode_to_vec()[..]).unwrap(), encoded);
            let raw = RawSendRequest::decode(&expected.encode_to_vec()[..]).unwrap();
            assert_eq!((&raw.envelopes[..], raw.local_only), (&batch.encode_to_vec()[..], local_only));
            assert_eq!(raw.encode_to_vec(), expected.encode_to_vec());
            assert_eq!(raw.encoded_len(), expected.encoded_len());
        }
        // Absent batch; and a batch field seen twice merges as prost merges it (appends).
        assert_eq!(RawSendRequest::decode(&[][..]).unwrap(), RawSendRequest::default());
        let (one, two) =
            (EnvelopeBatch { batch: vec![envelope(1, "a")] }, EnvelopeBatch { batch: vec![envelope(2, "b")] });
        let mut twice = SendRequest { envelopes: Some(one.clone()), local_only: false }.encode_to_vec();
        twice.extend(SendRequest { envelopes: Some(two.clone()), local_only: true }.encode_to_vec());
        let merged = SendRequest::decode(&twice[..]).unwrap();
        let raw = RawSendRequest::decode(&twice[..]).unwrap();
        assert_eq!(EnvelopeBatch::decode(&raw.envelopes[..]).unwrap(), merged.envelopes.unwrap());
        assert!(raw.local_only);
    }

    #[test]
    fn raw_batch_takes_the_whole_input() {
        let bytes = EnvelopeBatch { batch: vec![envelope(7, "x")] }.encode_to_vec();
        let raw = RawBatch::decode(&bytes[..]).unwrap();
        assert_eq!(&raw.0[..], &bytes[..]);
        assert_eq!(raw.encode_to_vec(), bytes);
    }
}
