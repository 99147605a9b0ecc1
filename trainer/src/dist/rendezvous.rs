//! Handing one opaque id from rank 0 to every other rank over TCP, before any collective engine
//! exists: NCCL's communicator needs the same 128-byte unique id on every rank, made by rank 0.
//! Rank 0 listens on the job's rendezvous port (`MASTER_PORT`, on every interface), the other
//! ranks connect to `MASTER_ADDR:MASTER_PORT` (retrying until the timeout, since rank 0 may start
//! later) and introduce themselves; once every rank has arrived, rank 0 sends each the id.
//!
//! Every message is framed (magic, protocol version, world size). A connection that is not a
//! trainer rank at all (a port scanner, a health check, anything that does not open with the
//! magic within a few seconds) is dropped with a warning and rank 0 keeps waiting for the real
//! ranks; another job's rank, another trainer build or a launch with a different world size is a
//! clear error naming the address and the ranks, never a hang or a wrong communicator; a rank
//! that does not arrive makes rank 0 stop after the timeout naming it.
//!
//! Wire format (integers little-endian): a rank says `magic[4] version:u16 world:u32 rank:u32`;
//! rank 0 answers `magic[4] version:u16 world:u32 len:u32` and `len` bytes of id (`len` 0 when it
//! refuses the rank: the world sizes differ).

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use super::world::Rendezvous;

/// The length of the id handed out (NCCL's `ncclUniqueId`).
pub const ID_LEN: usize = 128;

const MAGIC: [u8; 4] = *b"EJRV";
const VERSION: u16 = 1;
const HELLO_LEN: usize = 4 + 2 + 4 + 4;
const REPLY_LEN: usize = 4 + 2 + 4 + 4;
/// How often a rank retries connecting to rank 0 while it is not listening yet.
const RETRY: Duration = Duration::from_millis(100);
/// How long rank 0 waits for a connection's greeting before dropping it as not a rank (a rank
/// sends it right after connecting).
const GREETING: Duration = Duration::from_secs(3);

/// Why the ranks did not all get the id.
#[derive(Debug, thiserror::Error)]
pub enum RendezvousError {
    #[error(
        "rank 0 cannot listen on port {port} for the rendezvous at {addr}:{port}: {source} (another job on this port? set MASTER_PORT)"
    )]
    Bind {
        addr: String,
        port: u16,
        source: io::Error,
    },
    #[error(
        "rendezvous at {addr}: {} of {world} did not arrive within {secs:.0} s (are they running, with the same MASTER_ADDR/MASTER_PORT?){}",
        name_ranks(missing),
        name_dropped(dropped)
    )]
    Missing {
        addr: String,
        world: usize,
        missing: Vec<usize>,
        secs: f64,
        /// Connections dropped as not ranks of this job, with why.
        dropped: Vec<String>,
    },
    #[error(
        "rank {rank} of {world}: rank 0 at {addr} did not answer within {secs:.0} s ({last}); is rank 0 running, and is {addr} its address?"
    )]
    NoServer {
        addr: String,
        rank: usize,
        world: usize,
        secs: f64,
        last: String,
    },
    #[error(
        "rank {rank} of {world}: rank 0 at {addr} accepted but sent no id within {secs:.0} s (it waits for every rank; its log names the ranks that did not arrive)"
    )]
    NoId {
        addr: String,
        rank: usize,
        world: usize,
        secs: f64,
    },
    #[error("rendezvous at {addr}: {peer} is not a rank of this job: {what}")]
    BadPeer {
        addr: String,
        peer: String,
        what: String,
    },
    #[error(
        "rendezvous at {addr}: rank {rank} (from {peer}) was launched with a world of {peer_world}, rank 0 with {world}; every rank must be started with the same WORLD_SIZE"
    )]
    WorldMismatch {
        addr: String,
        peer: String,
        rank: usize,
        peer_world: usize,
        world: usize,
    },
    #[error(
        "rendezvous at {addr}: rank {rank} arrived twice (from {first} and {second}); two jobs or two launches on the same MASTER_PORT?"
    )]
    Duplicate {
        addr: String,
        rank: usize,
        first: String,
        second: String,
    },
    #[error("rank {rank} of {world}: the process at {addr} is not rank 0 of this job: {what}")]
    BadServer {
        addr: String,
        rank: usize,
        world: usize,
        what: String,
    },
    #[error(
        "rank {rank} of {world}: rank 0 at {addr} closed the connection before sending the id (it stops when a rank does not arrive or does not fit; its log says which)"
    )]
    Closed {
        addr: String,
        rank: usize,
        world: usize,
    },
    #[error(
        "rank {rank} of {world}: rank 0 at {addr} was launched with a world of {its_world}, this rank with {world}; every rank must be started with the same WORLD_SIZE"
    )]
    ServerWorld {
        addr: String,
        rank: usize,
        world: usize,
        its_world: usize,
    },
    #[error("rendezvous at {addr}: {what}: {source}")]
    Io {
        addr: String,
        what: String,
        source: io::Error,
    },
    #[error("rendezvous: rank 0 must provide the id to hand out (rank {rank} of {world})")]
    NoIdGiven { rank: usize, world: usize },
}

fn name_dropped(d: &[String]) -> String {
    match d {
        [] => String::new(),
        [one] => format!("; one connection was dropped as not a rank: {one}"),
        [first, ..] => format!(
            "; {} connections were dropped as not ranks, the first: {first}",
            d.len()
        ),
    }
}

fn name_ranks(r: &[usize]) -> String {
    let list: Vec<String> = r.iter().map(usize::to_string).collect();
    match r.len() {
        1 => format!("rank {}", list[0]),
        _ => format!("ranks {}", list.join(", ")),
    }
}

/// Rank 0 hands out `id` (which it must give), the others receive it; every rank returns the id.
/// `timeout` bounds the whole exchange on every rank.
pub fn exchange(
    rdv: &Rendezvous,
    rank: usize,
    world: usize,
    id: Option<&[u8; ID_LEN]>,
    timeout: Duration,
) -> Result<[u8; ID_LEN], RendezvousError> {
    if rank == 0 {
        let id = id.ok_or(RendezvousError::NoIdGiven { rank, world })?;
        let listener = listen(rdv)?;
        serve(&listener, rdv, world, id, timeout)?;
        Ok(*id)
    } else {
        fetch(rdv, rank, world, timeout)
    }
}

/// Rank 0's socket: the rendezvous port on every interface (`MASTER_ADDR` names this machine
/// for the others, and may resolve to another interface here).
pub fn listen(rdv: &Rendezvous) -> Result<TcpListener, RendezvousError> {
    TcpListener::bind((Ipv4Addr::UNSPECIFIED, rdv.port)).map_err(|source| RendezvousError::Bind {
        addr: rdv.addr.clone(),
        port: rdv.port,
        source,
    })
}

fn label(rdv: &Rendezvous) -> String {
    format!("{}:{}", rdv.addr, rdv.port)
}

fn io_err(addr: &str, what: impl Into<String>) -> impl FnOnce(io::Error) -> RendezvousError {
    let (addr, what) = (addr.to_string(), what.into());
    move |source| RendezvousError::Io { addr, what, source }
}

/// Rank 0: waits for ranks `1..world` on `listener`, then sends each the id.
pub fn serve(
    listener: &TcpListener,
    rdv: &Rendezvous,
    world: usize,
    id: &[u8; ID_LEN],
    timeout: Duration,
) -> Result<(), RendezvousError> {
    let addr = label(rdv);
    let deadline = Instant::now() + timeout;
    listener
        .set_nonblocking(true)
        .map_err(io_err(&addr, "cannot poll the listening socket"))?;
    // arrived[r]: the connection of rank r and where it came from
    let mut arrived: Vec<Option<(TcpStream, SocketAddr)>> = (0..world).map(|_| None).collect();
    let mut waiting = world.saturating_sub(1);
    let mut dropped: Vec<String> = Vec::new();
    while waiting > 0 {
        let (mut stream, peer) = match listener.accept() {
            Ok(s) => s,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return Err(RendezvousError::Missing {
                        addr,
                        world,
                        missing: (1..world).filter(|&r| arrived[r].is_none()).collect(),
                        secs: timeout.as_secs_f64(),
                        dropped,
                    });
                }
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            Err(e) => return Err(io_err(&addr, "accepting a rank")(e)),
        };
        let peer_s = peer.to_string();
        stream
            .set_nonblocking(false)
            .and_then(|()| stream.set_read_timeout(Some(left(deadline).min(GREETING))))
            .and_then(|()| stream.set_write_timeout(Some(left(deadline))))
            .map_err(io_err(
                &addr,
                format!("setting up the connection from {peer_s}"),
            ))?;
        // not a rank at all: dropped, and the real ranks are still awaited
        let mut drop_stray = |what: String| {
            tracing::warn!(
                "rendezvous at {addr}: {peer_s} is not a rank of this job: {what}; dropped, still \
                 waiting for the ranks"
            );
            dropped.push(format!("{peer_s}: {what}"));
        };
        let mut hello = [0u8; HELLO_LEN];
        if let Err(e) = stream.read_exact(&mut hello) {
            drop_stray(format!(
                "no complete greeting within {} s ({e})",
                GREETING.as_secs()
            ));
            continue;
        }
        if hello[..4] != MAGIC {
            drop_stray(format!(
                "wrong magic {:?} (expected {:?})",
                String::from_utf8_lossy(&hello[..4]),
                String::from_utf8_lossy(&MAGIC)
            ));
            continue;
        }
        let (peer_world, peer_rank) =
            parse_header(&hello).map_err(|what| RendezvousError::BadPeer {
                addr: addr.clone(),
                peer: peer_s.clone(),
                what,
            })?;
        let (peer_world, peer_rank) = (peer_world as usize, peer_rank as usize);
        if peer_world != world {
            // tell it too, so both sides name the mismatch
            let _ = stream.write_all(&reply_header(world, 0));
            return Err(RendezvousError::WorldMismatch {
                addr,
                peer: peer_s,
                rank: peer_rank,
                peer_world,
                world,
            });
        }
        if peer_rank == 0 || peer_rank >= world {
            return Err(RendezvousError::BadPeer {
                addr,
                peer: peer_s,
                what: format!("it says rank {peer_rank}, not one of 1..{world}"),
            });
        }
        if let Some((_, first)) = &arrived[peer_rank] {
            return Err(RendezvousError::Duplicate {
                addr,
                rank: peer_rank,
                first: first.to_string(),
                second: peer_s,
            });
        }
        tracing::debug!("rendezvous: rank {peer_rank} of {world} arrived from {peer_s}");
        // the id may take until the last rank arrives
        stream
            .set_read_timeout(Some(left(deadline)))
            .map_err(io_err(
                &addr,
                format!("setting up the connection from {peer_s}"),
            ))?;
        arrived[peer_rank] = Some((stream, peer));
        waiting -= 1;
    }
    for (rank, slot) in arrived.iter_mut().enumerate() {
        if let Some((stream, peer)) = slot {
            stream
                .write_all(&reply_header(world, ID_LEN))
                .and_then(|()| stream.write_all(id))
                .and_then(|()| stream.flush())
                .map_err(io_err(
                    &addr,
                    format!("sending the id to rank {rank} at {peer}"),
                ))?;
        }
    }
    Ok(())
}

/// Ranks other than 0: connects to rank 0 (retrying until the deadline), says who it is, and
/// reads the id.
pub fn fetch(
    rdv: &Rendezvous,
    rank: usize,
    world: usize,
    timeout: Duration,
) -> Result<[u8; ID_LEN], RendezvousError> {
    let addr = label(rdv);
    let deadline = Instant::now() + timeout;
    let no_server = |last: String| RendezvousError::NoServer {
        addr: addr.clone(),
        rank,
        world,
        secs: timeout.as_secs_f64(),
        last,
    };
    let mut stream = connect(rdv, deadline).map_err(no_server)?;
    let bad = |what: String| RendezvousError::BadServer {
        addr: addr.clone(),
        rank,
        world,
        what,
    };
    let too_big =
        |what: &str, n: usize| bad(format!("this rank's {what} {n} does not fit the protocol"));
    let hello = header(
        u32::try_from(world).map_err(|_| too_big("world size", world))?,
        u32::try_from(rank).map_err(|_| too_big("rank", rank))?,
    );
    stream
        .set_read_timeout(Some(left(deadline)))
        .and_then(|()| stream.set_write_timeout(Some(left(deadline))))
        .and_then(|()| stream.write_all(&hello))
        .map_err(io_err(&addr, format!("rank {rank} greeting rank 0")))?;
    let fail = |e: ReadFail, what: &str| match e {
        ReadFail::Timeout => RendezvousError::NoId {
            addr: addr.clone(),
            rank,
            world,
            secs: timeout.as_secs_f64(),
        },
        ReadFail::Closed => RendezvousError::Closed {
            addr: addr.clone(),
            rank,
            world,
        },
        ReadFail::Io(e) => bad(format!("reading {what}: {e}")),
    };
    let mut reply = [0u8; REPLY_LEN];
    read_reply(&mut stream, &mut reply).map_err(|e| fail(e, "its answer"))?;
    let (its_world, len) = parse_header(&reply).map_err(bad)?;
    if its_world as usize != world {
        return Err(RendezvousError::ServerWorld {
            addr: addr.clone(),
            rank,
            world,
            its_world: its_world as usize,
        });
    }
    if len as usize != ID_LEN {
        return Err(bad(format!("it sends an id of {len} bytes, not {ID_LEN}")));
    }
    let mut id = [0u8; ID_LEN];
    read_reply(&mut stream, &mut id).map_err(|e| fail(e, "the id"))?;
    Ok(id)
}

/// Time left before `deadline`, at least 1 ms (a zero socket timeout means none).
fn left(deadline: Instant) -> Duration {
    deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1))
}

/// Connects to rank 0, retrying until `deadline`; the error is the last failure.
fn connect(rdv: &Rendezvous, deadline: Instant) -> Result<TcpStream, String> {
    let mut last = String::from("no attempt");
    loop {
        match (rdv.addr.as_str(), rdv.port).to_socket_addrs() {
            Ok(addrs) => {
                for a in addrs {
                    let wait = left(deadline).min(Duration::from_secs(2));
                    match TcpStream::connect_timeout(&a, wait) {
                        Ok(s) => return Ok(s),
                        Err(e) => last = format!("{a}: {e}"),
                    }
                }
            }
            Err(e) => last = format!("cannot resolve {}: {e}", rdv.addr),
        }
        if Instant::now() + RETRY >= deadline {
            return Err(last);
        }
        std::thread::sleep(RETRY);
    }
}

enum ReadFail {
    Timeout,
    Closed,
    Io(io::Error),
}

fn read_reply(stream: &mut TcpStream, buf: &mut [u8]) -> Result<(), ReadFail> {
    stream.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ReadFail::Timeout,
        io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset => ReadFail::Closed,
        _ => ReadFail::Io(e),
    })
}

fn header(world: u32, last: u32) -> [u8; HELLO_LEN] {
    let mut h = [0u8; HELLO_LEN];
    h[..4].copy_from_slice(&MAGIC);
    h[4..6].copy_from_slice(&VERSION.to_le_bytes());
    h[6..10].copy_from_slice(&world.to_le_bytes());
    h[10..14].copy_from_slice(&last.to_le_bytes());
    h
}

fn reply_header(world: usize, len: usize) -> [u8; REPLY_LEN] {
    // world sizes beyond u32 were refused on the other side already
    header(
        u32::try_from(world).unwrap_or(u32::MAX),
        u32::try_from(len).unwrap_or(u32::MAX),
    )
}

/// `(world, last field)` of a greeting or an answer, or what is wrong with it.
fn parse_header(h: &[u8; HELLO_LEN]) -> Result<(u32, u32), String> {
    if h[..4] != MAGIC {
        return Err(format!(
            "wrong magic {:?} (expected {:?})",
            String::from_utf8_lossy(&h[..4]),
            String::from_utf8_lossy(&MAGIC)
        ));
    }
    let version = u16::from_le_bytes([h[4], h[5]]);
    if version != VERSION {
        return Err(format!(
            "rendezvous protocol version {version}, this trainer speaks {VERSION} (a different \
             trainer build?)"
        ));
    }
    let world = u32::from_le_bytes([h[6], h[7], h[8], h[9]]);
    let last = u32::from_le_bytes([h[10], h[11], h[12], h[13]]);
    Ok((world, last))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A port nobody listens on right now (bound once on port 0, then released).
    fn free_port() -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }

    fn rdv(port: u16) -> Rendezvous {
        Rendezvous {
            addr: "127.0.0.1".into(),
            port,
        }
    }

    fn id() -> [u8; ID_LEN] {
        std::array::from_fn(|i| (i * 37 % 251) as u8)
    }

    /// Runs `world` ranks as threads; rank 0 after the others, so they must retry.
    fn run(world: usize, timeout: Duration) -> Vec<Result<[u8; ID_LEN], RendezvousError>> {
        let r = rdv(free_port());
        let handles: Vec<_> = (0..world)
            .rev()
            .map(|rank| {
                let r = r.clone();
                std::thread::spawn(move || {
                    if rank == 0 {
                        std::thread::sleep(Duration::from_millis(300));
                        exchange(&r, 0, world, Some(&id()), timeout)
                    } else {
                        exchange(&r, rank, world, None, timeout)
                    }
                })
            })
            .collect();
        let mut out: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        out.reverse();
        out
    }

    #[test]
    fn every_rank_receives_rank_0s_bytes() {
        for world in [2, 3] {
            for (rank, got) in run(world, Duration::from_secs(20)).into_iter().enumerate() {
                assert_eq!(got.unwrap(), id(), "rank {rank} of {world}");
            }
        }
    }

    #[test]
    fn a_world_of_one_needs_nobody() {
        let r = rdv(free_port());
        assert_eq!(
            exchange(&r, 0, 1, Some(&id()), Duration::from_secs(1)).unwrap(),
            id()
        );
    }

    #[test]
    fn a_rank_that_does_not_arrive_is_named() {
        let r = rdv(free_port());
        let peer = {
            let r = r.clone();
            std::thread::spawn(move || exchange(&r, 1, 3, None, Duration::from_secs(2)))
        };
        let t0 = Instant::now();
        let e = exchange(&r, 0, 3, Some(&id()), Duration::from_secs(1)).unwrap_err();
        assert!(t0.elapsed() < Duration::from_secs(5));
        let msg = e.to_string();
        assert!(
            msg.contains("rank 2 of 3 did not arrive") && msg.contains("127.0.0.1"),
            "{msg}"
        );
        // rank 1 arrived but gets no id: its own error, not a hang or a panic
        let e = peer.join().unwrap().unwrap_err().to_string();
        assert!(e.contains("rank 1 of 3") && e.contains("closed"), "{e}");
    }

    #[test]
    fn no_rank_0_is_a_timeout_naming_the_address() {
        let port = free_port();
        let e = exchange(&rdv(port), 2, 4, None, Duration::from_millis(500))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("rank 2 of 4") && e.contains(&format!("127.0.0.1:{port}")),
            "{e}"
        );
    }

    /// Connects to `port` (retrying while nobody listens) and sends `bytes`; keeps the connection
    /// open for `hold` (a silent peer holds it without sending).
    fn stray(port: u16, bytes: &'static [u8], hold: Duration) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            let t0 = Instant::now();
            loop {
                if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
                    let _ = s.write_all(bytes);
                    std::thread::sleep(hold);
                    return;
                }
                assert!(t0.elapsed() < Duration::from_secs(10));
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    }

    /// Strays on the port (an HTTP request, half a greeting, a connection that says nothing) are
    /// dropped and the real rank still gets the id; when a rank is missing, the timeout error
    /// names what was dropped.
    #[test]
    fn peers_that_are_not_ranks_are_dropped_and_the_ranks_still_meet() {
        let r = rdv(free_port());
        let port = r.port;
        let strays = [
            stray(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", Duration::ZERO),
            stray(port, b"EJ", Duration::ZERO),
            stray(port, b"", Duration::from_secs(4)),
        ];
        // the real rank comes after the strays
        let rank1 = {
            let r = r.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(300));
                exchange(&r, 1, 2, None, Duration::from_secs(20))
            })
        };
        let t0 = Instant::now();
        let got0 = exchange(&r, 0, 2, Some(&id()), Duration::from_secs(20)).unwrap();
        let got1 = rank1.join().unwrap().unwrap();
        assert_eq!((got0, got1), (id(), id()));
        // the silent one cost at most the greeting timeout
        assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
        for s in strays {
            s.join().unwrap();
        }

        // nobody real: the timeout names the rank and the dropped connection
        let r = rdv(free_port());
        let s = stray(r.port, b"GET / HTTP/1.1\r\n\r\n", Duration::ZERO);
        let e = exchange(&r, 0, 2, Some(&id()), Duration::from_secs(2))
            .unwrap_err()
            .to_string();
        s.join().unwrap();
        assert!(
            e.contains("rank 1 of 2 did not arrive")
                && e.contains("dropped as not a rank")
                && e.contains("wrong magic"),
            "{e}"
        );
    }

    #[test]
    fn a_server_that_is_not_rank_0_is_an_error() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut hello = [0u8; HELLO_LEN];
            let _ = s.read_exact(&mut hello);
            let _ = s.write_all(b"SSH-2.0-OpenSSH_9.2\r\n");
        });
        let e = exchange(&rdv(port), 1, 2, None, Duration::from_secs(10))
            .unwrap_err()
            .to_string();
        server.join().unwrap();
        assert!(e.contains("not rank 0 of this job"), "{e}");
    }

    #[test]
    fn mismatched_world_sizes_are_named_on_both_sides() {
        let r = rdv(free_port());
        let peer = {
            let r = r.clone();
            std::thread::spawn(move || exchange(&r, 1, 4, None, Duration::from_secs(10)))
        };
        let e = exchange(&r, 0, 2, Some(&id()), Duration::from_secs(10))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("rank 1") && e.contains("world of 4") && e.contains("rank 0 with 2"),
            "{e}"
        );
        let e = peer.join().unwrap().unwrap_err().to_string();
        assert!(
            e.contains("rank 1 of 4")
                && e.contains("rank 0 at 127.0.0.1")
                && e.contains("world of 2"),
            "{e}"
        );
    }

    #[test]
    fn a_port_in_use_is_named() {
        let l = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
        let port = l.local_addr().unwrap().port();
        let e = exchange(&rdv(port), 0, 2, Some(&id()), Duration::from_secs(1))
            .unwrap_err()
            .to_string();
        assert!(e.contains(&format!("port {port}")), "{e}");
    }
}
