//! Property and behaviour tests of the frame codec: random input never panics, round trips,
//! tampering, wrong keys and names, oversize, versions, replays, streams.
#![allow(clippy::unwrap_used, reason = "test")]

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use proptest::prelude::*;
use quorate_wire::{
    ClientKey, ClusterKey, HEADER_BYTES, KeyRing, MessageKind, Opener, Sealer, StreamOpener,
    WireConfig, WireError, read_frame, write_frame,
};

const KIND: MessageKind = MessageKind(0x0201);

fn key(b: u8) -> ClusterKey {
    ClusterKey::from_bytes([b; 32])
}

/// A config on a fixed, settable clock so tests are deterministic.
fn config_at(name: &str, k: ClusterKey, clock: &Arc<AtomicU64>) -> WireConfig {
    let mut c = WireConfig::new(name, KeyRing::new(k, vec![])).unwrap();
    let clock = clock.clone();
    c.wall_clock = Arc::new(move || clock.load(Ordering::Relaxed));
    c
}

fn clock() -> Arc<AtomicU64> {
    Arc::new(AtomicU64::new(1_700_000_000_000))
}

fn pair() -> (Sealer, Opener) {
    let c = config_at("prod", key(1), &clock());
    (Sealer::new(&c), Opener::new(&c))
}

#[test]
fn round_trip_and_kind() {
    let (s, o) = pair();
    let msg = ("hello".to_owned(), vec![1u64, 2, 3]);
    let f = s.seal(KIND, &msg).unwrap();
    let (kind, back): (_, (String, Vec<u64>)) = o.open(&f).unwrap();
    assert_eq!(kind, KIND);
    assert_eq!(back, msg);
}

#[test]
fn wrong_key_rejected() {
    let ck = clock();
    let f = Sealer::new(&config_at("prod", key(1), &ck))
        .seal(KIND, &1u8)
        .unwrap();
    let o = Opener::new(&config_at("prod", key(2), &ck));
    assert!(matches!(o.open::<u8>(&f), Err(WireError::AuthFailed)));
}

#[test]
fn wrong_cluster_name_rejected_clearly() {
    let ck = clock();
    let f = Sealer::new(&config_at("prod", key(1), &ck))
        .seal(KIND, &1u8)
        .unwrap();
    let o = Opener::new(&config_at("staging", key(1), &ck));
    let e = o.open::<u8>(&f).unwrap_err();
    assert!(matches!(e, WireError::WrongCluster { .. }), "{e}");
    assert!(e.to_string().contains("cluster_name"));
}

#[test]
fn cluster_name_is_authenticated_even_when_tags_collide() {
    // Forge a frame whose cluster tag matches the receiver but that was sealed for another
    // name: the AEAD must still reject it, because the full name is associated data.
    let ck = clock();
    let mut f = Sealer::new(&config_at("prod", key(1), &ck))
        .seal(KIND, &1u8)
        .unwrap();
    let other = config_at("prod2", key(1), &ck);
    let probe = Sealer::new(&other).seal(KIND, &1u8).unwrap();
    f[8..12].copy_from_slice(&probe[8..12]);
    assert!(matches!(
        Opener::new(&other).open::<u8>(&f),
        Err(WireError::AuthFailed)
    ));
}

#[test]
fn key_rotation_accepts_old_and_new() {
    let ck = clock();
    let old = config_at("prod", key(1), &ck);
    let mut rotating = config_at("prod", key(2), &ck);
    rotating.keys = KeyRing::new(key(2), vec![key(1)]);
    let o = Opener::new(&rotating);
    let from_old = Sealer::new(&old).seal(KIND, &1u8).unwrap();
    let from_new = Sealer::new(&rotating).seal(KIND, &2u8).unwrap();
    assert_eq!(o.open::<u8>(&from_old).unwrap().1, 1);
    assert_eq!(o.open::<u8>(&from_new).unwrap().1, 2);
    // A node that already dropped the old key rejects it.
    let strict = Opener::new(&config_at("prod", key(2), &ck));
    let again = Sealer::new(&old).seal(KIND, &1u8).unwrap();
    assert!(matches!(
        strict.open::<u8>(&again),
        Err(WireError::AuthFailed)
    ));
}

/// The three steps of a rotation done on live sealers and openers (as SIGHUP does in the agent):
/// nothing is re-created, no session restarts, and each step takes effect at the next frame.
#[test]
fn a_ring_replaced_in_place_rotates_live_sealers_and_openers() {
    let ck = clock();
    let a = config_at("prod", key(1), &ck);
    let b = config_at("prod", key(1), &ck);
    let (sa, ob) = (Sealer::new(&a), Opener::new(&b));
    let (sb, oa) = (Sealer::new(&b), Opener::new(&a));
    let session = sa.session();
    // Step 1: both accept the new key; both still send the old one.
    a.keys.replace(key(1), vec![key(2)]).unwrap();
    b.keys.replace(key(1), vec![key(2)]).unwrap();
    assert_eq!(ob.open::<u8>(&sa.seal(KIND, &1u8).unwrap()).unwrap().1, 1);
    // Step 2: a sends the new key first; b, still sending the old one, is accepted by a.
    a.keys.replace(key(2), vec![key(1)]).unwrap();
    let new_frame = sa.seal(KIND, &2u8).unwrap();
    assert!(
        Opener::new(&config_at("prod", key(1), &ck))
            .open::<u8>(&new_frame)
            .is_err(),
        "a sealer of a replaced ring must seal with the new send key"
    );
    assert_eq!(ob.open::<u8>(&new_frame).unwrap().1, 2);
    assert_eq!(oa.open::<u8>(&sb.seal(KIND, &3u8).unwrap()).unwrap().1, 3);
    b.keys.replace(key(2), vec![key(1)]).unwrap();
    // Step 3: both drop the old key; a frame under it is refused by the live opener.
    let stale = Sealer::new(&config_at("prod", key(1), &ck))
        .seal(KIND, &4u8)
        .unwrap();
    a.keys.replace(key(2), vec![]).unwrap();
    b.keys.replace(key(2), vec![]).unwrap();
    assert!(matches!(ob.open::<u8>(&stale), Err(WireError::AuthFailed)));
    assert_eq!(ob.open::<u8>(&sa.seal(KIND, &5u8).unwrap()).unwrap().1, 5);
    assert_eq!(sa.session(), session, "the session carried on");
    assert_eq!(a.keys.len(), 1);
    // Too many keys are refused, and the ring stays as it was.
    let many: Vec<ClusterKey> = (10..40).map(key).collect();
    assert!(matches!(
        a.keys.replace(key(3), many),
        Err(WireError::Config(_))
    ));
    assert_eq!(ob.open::<u8>(&sa.seal(KIND, &6u8).unwrap()).unwrap().1, 6);
}

#[test]
fn old_protocol_version_rejected_clearly() {
    let (s, o) = pair();
    let mut f = s.seal(KIND, &1u8).unwrap();
    f[4] = 1;
    let e = o.open::<u8>(&f).unwrap_err();
    assert!(
        matches!(
            e,
            WireError::UnsupportedVersion {
                got: 1,
                supported: quorate_wire::PROTOCOL_VERSION
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("version 1"));
}

#[test]
fn oversize_length_rejected_before_allocation() {
    let (s, o) = pair();
    let mut f = s.seal(KIND, &1u8).unwrap();
    f[36..40].copy_from_slice(&u32::MAX.to_be_bytes());
    assert!(matches!(
        o.open::<u8>(&f),
        Err(WireError::Oversize { max, .. }) if max == 1 << 20
    ));
}

#[tokio::test]
async fn oversize_on_a_stream_reads_no_body() {
    let (s, o) = pair();
    let mut f = s.seal(KIND, &1u8).unwrap();
    f[36..40].copy_from_slice(&(1u32 << 30).to_be_bytes());
    // Only the header is available: if the reader tried to read the claimed body it would
    // fail with an EOF instead of Oversize.
    let mut r: &[u8] = &f[..HEADER_BYTES];
    let e = read_frame::<u8, _>(&mut r, &mut StreamOpener::new(&o))
        .await
        .unwrap_err();
    assert!(matches!(e, WireError::Oversize { .. }), "{e}");
}

#[test]
fn sealing_too_large_a_message_is_an_error() {
    let ck = clock();
    let mut c = config_at("prod", key(1), &ck);
    c.frame_bytes_max = NonZeroU32::new(1024).unwrap();
    let s = Sealer::new(&c);
    assert!(matches!(
        s.seal(KIND, &vec![0u8; 2000]),
        Err(WireError::Oversize { .. })
    ));
    assert!(s.seal(KIND, &vec![0u8; s.payload_bytes_max() - 2]).is_ok());
}

#[test]
fn replay_rejected_and_stale_rejected() {
    let ck = clock();
    let c = config_at("prod", key(1), &ck);
    let (s, o) = (Sealer::new(&c), Opener::new(&c));
    let f = s.seal(KIND, &1u8).unwrap();
    o.open::<u8>(&f).unwrap();
    assert!(matches!(o.open::<u8>(&f), Err(WireError::Replay(_))));
    // A frame held back past the replay window is stale.
    let late = s.seal(KIND, &2u8).unwrap();
    ck.fetch_add(31_000, Ordering::Relaxed);
    assert!(matches!(o.open::<u8>(&late), Err(WireError::Replay(_))));
}

#[test]
fn restarted_receiver_rejects_frames_from_before_its_start() {
    let ck = clock();
    let c = config_at("prod", key(1), &ck);
    let s = Sealer::new(&c);
    let f = s.seal(KIND, &1u8).unwrap();
    Opener::new(&c).open::<u8>(&f).unwrap();
    ck.fetch_add(5_000, Ordering::Relaxed);
    let restarted = Opener::new(&c);
    assert!(matches!(
        restarted.open::<u8>(&f),
        Err(WireError::Replay(_))
    ));
}

#[test]
fn garbage_and_truncation_are_typed_errors() {
    let (s, o) = pair();
    assert!(matches!(
        o.open::<u8>(b"GET / HTTP/1.1\r\n\r\n......................."),
        Err(WireError::BadMagic(_))
    ));
    assert!(matches!(
        o.open::<u8>(&[]),
        Err(WireError::Truncated { .. })
    ));
    let f = s.seal(KIND, &1u8).unwrap();
    assert!(matches!(
        o.open::<u8>(&f[..f.len() - 1]),
        Err(WireError::Truncated { .. })
    ));
}

#[test]
fn authentic_but_wrong_type_is_a_decode_error() {
    let (s, o) = pair();
    let f = s.seal(KIND, &1u8).unwrap();
    assert!(matches!(
        o.open::<(u64, String)>(&f),
        Err(WireError::Decode(_))
    ));
}

#[tokio::test]
async fn stream_round_trip_and_replayed_connection_rejected() {
    let (s, o) = pair();
    let mut buf = Vec::new();
    for i in 0..5u32 {
        write_frame(&mut buf, &s, KIND, &i).await.unwrap();
    }
    let mut r: &[u8] = &buf;
    let mut so = StreamOpener::new(&o);
    for i in 0..5u32 {
        assert_eq!(read_frame::<u32, _>(&mut r, &mut so).await.unwrap().1, i);
    }
    // The same bytes replayed on a new connection to the same node.
    let mut r: &[u8] = &buf;
    let e = read_frame::<u32, _>(&mut r, &mut StreamOpener::new(&o))
        .await
        .unwrap_err();
    assert!(matches!(e, WireError::Replay(_)), "{e}");
}

#[tokio::test]
async fn stream_reordering_rejected() {
    let (s, o) = pair();
    let a = s.seal(KIND, &1u8).unwrap();
    let b = s.seal(KIND, &2u8).unwrap();
    let mut buf = b.clone();
    buf.extend_from_slice(&a);
    let mut r: &[u8] = &buf;
    let mut so = StreamOpener::new(&o);
    read_frame::<u8, _>(&mut r, &mut so).await.unwrap();
    assert!(matches!(
        read_frame::<u8, _>(&mut r, &mut so).await,
        Err(WireError::Replay(_))
    ));
}

#[tokio::test]
async fn real_tcp_and_udp_through_the_net_seam() {
    use quorate_wire::net::{Net, TokioNet};
    let (s, o) = pair();
    let net = TokioNet;
    let l = net.bind_tcp("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let server = tokio::spawn({
        let o = o.clone();
        async move {
            let (mut c, _) = l.accept().await.unwrap();
            read_frame::<String, _>(&mut c, &mut StreamOpener::new(&o))
                .await
                .unwrap()
                .1
        }
    });
    let mut c = net.connect_tcp(&addr).await.unwrap();
    write_frame(&mut c, &s, KIND, "over tcp").await.unwrap();
    assert_eq!(server.await.unwrap(), "over tcp");

    let a = net.bind_udp("127.0.0.1:0").await.unwrap();
    let b = net.bind_udp("127.0.0.1:0").await.unwrap();
    let f = s.seal(KIND, "over udp").unwrap();
    a.send_to(&f, b.local_addr().unwrap()).await.unwrap();
    let mut buf = vec![0u8; 2048];
    let (n, from) = b.recv_from(&mut buf).await.unwrap();
    assert_eq!(from, a.local_addr().unwrap());
    assert_eq!(o.open::<String>(&buf[..n]).unwrap().1, "over udp");
}

#[test]
fn config_errors_name_the_field() {
    let ck = clock();
    let mut c = config_at("prod", key(1), &ck);
    c.frame_bytes_max = NonZeroU32::new(10).unwrap();
    assert!(
        c.validate()
            .unwrap_err()
            .to_string()
            .contains("frame_bytes_max")
    );
    assert!(
        WireConfig::new("", KeyRing::new(key(1), vec![]))
            .unwrap_err()
            .to_string()
            .contains("cluster_name")
    );
    assert!(ClusterKey::from_hex("zz").is_err());
    assert!(ClusterKey::from_hex(&"g0".repeat(32)).is_err());
    let k = ClusterKey::generate().unwrap();
    assert_eq!(ClusterKey::from_hex(&k.to_hex()).unwrap(), k);
    assert!(
        !format!("{k:?}").contains(&k.to_hex()),
        "Debug must not leak the key"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let (_, o) = pair();
        prop_assert!(o.open::<Vec<u8>>(&bytes).is_err());
    }

    #[test]
    fn random_bytes_behind_a_valid_magic_never_panic(
        version in any::<u8>(),
        rest in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        let (_, o) = pair();
        let mut f = b"QRTW".to_vec();
        f.push(version);
        f.extend_from_slice(&rest);
        prop_assert!(o.open::<Vec<u8>>(&f).is_err());
    }

    #[test]
    fn round_trip_any_payload(
        payload in proptest::collection::vec(any::<u8>(), 0..4096),
        kind in any::<u16>(),
    ) {
        let (s, o) = pair();
        let f = s.seal(MessageKind(kind), &payload).unwrap();
        let (k, back): (_, Vec<u8>) = o.open(&f).unwrap();
        prop_assert_eq!(k, MessageKind(kind));
        prop_assert_eq!(back, payload);
    }

    #[test]
    fn every_single_byte_tamper_is_detected(
        payload in proptest::collection::vec(any::<u8>(), 0..64),
        flip in 1u8..=255,
        at_seed in any::<usize>(),
    ) {
        let (s, o) = pair();
        let f = s.seal(KIND, &payload).unwrap();
        // Every position once per case would be slow; proptest varies the position, and the
        // exhaustive test below covers every position of one frame.
        let at = at_seed % f.len();
        let mut t = f.clone();
        t[at] ^= flip;
        prop_assert!(o.open::<Vec<u8>>(&t).is_err(), "tamper at {} accepted", at);
    }
}

#[test]
fn every_single_byte_tamper_of_one_frame_is_detected_exhaustively() {
    let (s, o) = pair();
    let f = s.seal(KIND, &vec![7u8; 40]).unwrap();
    for at in 0..f.len() {
        for flip in [0x01u8, 0x80, 0xff] {
            let mut t = f.clone();
            t[at] ^= flip;
            assert!(
                o.open::<Vec<u8>>(&t).is_err(),
                "tamper at byte {at} accepted"
            );
        }
    }
    // And the untampered frame still opens (the tampered ones did not poison the guard).
    assert!(o.open::<Vec<u8>>(&f).is_ok());
}

/// Issue 14: "Frames can be replayed across nodes." A datagram sealed for node A fails
/// authentication at node B (same key, same cluster), and opens at A.
#[test]
fn datagram_sealed_for_one_node_is_rejected_by_another() {
    let ck = clock();
    let c = config_at("prod", key(1), &ck);
    let sender = Sealer::new(&c);
    let (at_a, at_b) = (Opener::new(&c), Opener::new(&c));
    let f = sender.seal_datagram(KIND, &7u32, b"node-a").unwrap();
    assert!(matches!(
        at_b.open_datagram(&f, b"node-b"),
        Err(WireError::AuthFailed)
    ));
    assert!(matches!(
        at_b.open_datagram(&f, quorate_wire::RECIPIENT_ANYONE),
        Err(WireError::AuthFailed)
    ));
    // Nor does a datagram open as a stream-style frame, or the other way round.
    assert!(matches!(at_b.open_raw(&f), Err(WireError::AuthFailed)));
    let plain = sender.seal(KIND, &7u32).unwrap();
    assert!(matches!(
        at_a.open_datagram(&plain, b"node-a"),
        Err(WireError::AuthFailed)
    ));
    let opened = at_a.open_datagram(&f, b"node-a").unwrap();
    assert_eq!(opened.kind, KIND);
    assert_eq!(postcard::from_bytes::<u32>(&opened.payload).unwrap(), 7);
    assert_eq!(quorate_wire::peek_kind(&f), Some(KIND));
    assert_eq!(quorate_wire::peek_kind(&f[..HEADER_BYTES - 1]), None);
    // A first-contact datagram opens for whoever receives it.
    let any = sender
        .seal_datagram(KIND, &8u32, quorate_wire::RECIPIENT_ANYONE)
        .unwrap();
    at_b.open_datagram(&any, quorate_wire::RECIPIENT_ANYONE)
        .unwrap();
}

/// Issue 14: "A node's opener has never seen its own sealer session, so its own datagrams pass
/// the replay check when sent back to it." With its sealer registered, they are dropped with
/// a distinct error, and a peer's frames still open.
#[test]
fn own_session_frames_are_rejected() {
    let ck = clock();
    let c = config_at("prod", key(1), &ck);
    let own = Sealer::new(&c);
    let peer = Sealer::new(&c);
    let opener = Opener::new(&c);
    opener.add_own_session(own.session());
    let f = own
        .seal_datagram(KIND, &1u8, quorate_wire::RECIPIENT_ANYONE)
        .unwrap();
    let e = opener
        .open_datagram(&f, quorate_wire::RECIPIENT_ANYONE)
        .unwrap_err();
    assert!(
        matches!(e, WireError::OwnSession(s) if s == own.session()),
        "{e}"
    );
    assert!(e.to_string().contains("own"));
    let g = peer
        .seal_datagram(KIND, &1u8, quorate_wire::RECIPIENT_ANYONE)
        .unwrap();
    opener
        .open_datagram(&g, quorate_wire::RECIPIENT_ANYONE)
        .unwrap();
    // Bounded: registering many sessions forgets the oldest.
    for s in 0..quorate_wire::OWN_SESSIONS_MAX as u64 {
        opener.add_own_session(s + 1_000);
    }
    let h = own
        .seal_datagram(KIND, &2u8, quorate_wire::RECIPIENT_ANYONE)
        .unwrap();
    opener
        .open_datagram(&h, quorate_wire::RECIPIENT_ANYONE)
        .unwrap();
}

#[tokio::test]
async fn a_frame_bound_to_one_connection_does_not_open_on_another() {
    let c = config_at("prod", key(1), &clock());
    let o = Opener::new(&c);
    let first = quorate_wire::Challenge::from_bytes([1; 16]);
    let second = quorate_wire::Challenge::from_bytes([2; 16]);
    let frame = Sealer::bound(&c, &first).seal(KIND, &5u8).unwrap();
    // On another connection (another challenge), or on one without a challenge: refused.
    for mut so in [StreamOpener::bound(&o, &second), StreamOpener::new(&o)] {
        let e = read_frame::<u8, _>(&mut frame.as_slice(), &mut so)
            .await
            .unwrap_err();
        assert!(matches!(e, WireError::AuthFailed), "{e:?}");
    }
    // On its own connection: accepted.
    let (_, v) = read_frame::<u8, _>(&mut frame.as_slice(), &mut StreamOpener::bound(&o, &first))
        .await
        .unwrap();
    assert_eq!(v, 5);
    // A challenge round-trips; anything else is not a challenge.
    assert_eq!(
        quorate_wire::Challenge::decode(&first.encode()).unwrap(),
        first
    );
    let e = quorate_wire::Challenge::decode(&[0u8; quorate_wire::CHALLENGE_BYTES]).unwrap_err();
    assert!(matches!(e, WireError::BadMagic(_)), "{e:?}");
}

/// A client key opens only where a stream asks for clients, says so, and is answered under
/// the same key; a datagram or a stream that did not opt in refuses it; a client key can
/// never be a cluster key.
#[tokio::test]
async fn a_client_key_opens_only_where_clients_are_accepted_and_is_answered_under_itself() {
    let ck = clock();
    let server = config_at("prod", key(1), &ck);
    server
        .keys
        .set_client_keys(vec![ClientKey::new(key(7))])
        .unwrap();
    let client = config_at("prod", key(7), &ck);
    let challenge = quorate_wire::Challenge::from_bytes([3; 16]);
    let opener = Opener::new(&server);
    let frame = Sealer::bound(&client, &challenge).seal(KIND, &9u8).unwrap();
    // Not accepted by a stream that did not opt in, nor as a datagram.
    let refused = quorate_wire::read_frame::<u8, _>(
        &mut frame.as_slice(),
        &mut StreamOpener::bound(&opener, &challenge),
    )
    .await;
    assert!(
        matches!(refused, Err(WireError::ClientKeyRefused)),
        "{refused:?}"
    );
    let dgram = Sealer::new(&client)
        .seal_datagram(KIND, &1u8, quorate_wire::RECIPIENT_ANYONE)
        .unwrap();
    assert!(matches!(
        opener.open_datagram(&dgram, quorate_wire::RECIPIENT_ANYONE),
        Err(WireError::ClientKeyRefused)
    ));
    // Accepted by a stream that accepts clients, which names the key.
    let frame = Sealer::bound(&client, &challenge)
        .seal(KIND, &10u8)
        .unwrap();
    let mut so = StreamOpener::bound(&opener, &challenge).accepting_clients();
    let opened = so.read_raw(&mut frame.as_slice()).await.unwrap();
    assert_eq!(opened.client, Some(ClientKey::new(key(7))));
    // A cluster-key frame on such a stream is no client.
    let peer = Sealer::bound(&server, &challenge)
        .seal(KIND, &11u8)
        .unwrap();
    let mut so = StreamOpener::bound(&opener, &challenge).accepting_clients();
    let opened = so.read_raw(&mut peer.as_slice()).await.unwrap();
    assert_eq!(opened.client, None);
    // The answer, sealed under the client key, opens at the client (which has no cluster key),
    // and an answer under the cluster key does not.
    let mut reply = Sealer::bound(&server, &challenge);
    reply.reply_under(Some(&ClientKey::new(key(7))));
    let answer = reply.seal(KIND, &12u8).unwrap();
    let at_client = Opener::new(&client);
    let got = quorate_wire::read_frame::<u8, _>(
        &mut answer.as_slice(),
        &mut StreamOpener::bound(&at_client, &challenge),
    )
    .await;
    assert_eq!(got.unwrap().1, 12);
    reply.reply_under(None);
    let under_cluster_key = reply.seal(KIND, &13u8).unwrap();
    let got = quorate_wire::read_frame::<u8, _>(
        &mut under_cluster_key.as_slice(),
        &mut StreamOpener::bound(&at_client, &challenge),
    )
    .await;
    assert!(matches!(got, Err(WireError::AuthFailed)));
    // A client key equal to a cluster key is refused, in either order, and changes nothing.
    assert!(matches!(
        server.keys.set_client_keys(vec![ClientKey::new(key(1))]),
        Err(WireError::Config(_))
    ));
    assert!(matches!(
        server.keys.replace(key(7), vec![]),
        Err(WireError::Config(_))
    ));
    assert_eq!(server.keys.client_key_count(), 1);
    assert!(!format!("{:?}", server.keys).contains(&key(7).to_hex()));
}
