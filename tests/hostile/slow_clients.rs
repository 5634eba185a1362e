//! Slow and idle clients: they do not block others, and they are cut.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::*;

/// Opens a connection that writes `request` one byte per second from its own thread and waits
/// for the server to end it. Returns the connection's thread, which yields how long after
/// connecting the server closed it and what it sent (None: still open after `give_up`).
fn slow_client(
    socket: &Path,
    request: &'static [u8],
    give_up: Duration,
) -> std::thread::JoinHandle<(Option<Duration>, Vec<u8>)> {
    let s = UnixStream::connect(socket).expect("slow client connects");
    std::thread::spawn(move || {
        let started = Instant::now();
        let mut reader = s.try_clone().unwrap();
        reader
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut writer = s;
        writer
            .set_write_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let mut sent = 0;
        let mut next_byte = started;
        let mut got = Vec::new();
        while started.elapsed() < give_up {
            if sent < request.len() && Instant::now() >= next_byte {
                if writer.write_all(&request[sent..sent + 1]).is_err() {
                    return (Some(started.elapsed()), got);
                }
                sent += 1;
                next_byte += Duration::from_secs(1);
            }
            let mut buf = [0u8; 512];
            match reader.read(&mut buf) {
                Ok(0) => return (Some(started.elapsed()), got),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(_) => return (Some(started.elapsed()), got),
            }
        }
        (None, got)
    })
}

#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn slow_and_idle_clients_do_not_block_others_and_are_cut() {
    let Some((s3, d)) = setup("slow_and_idle_clients_do_not_block_others_and_are_cut") else {
        return;
    };
    let b = new_bucket(s3, "slowloris");
    const SLOW: &[u8] = b"POST /VolumeDriver.List HTTP/1.1\r\nHost: plugin\r\n\
        Accept: application/vnd.docker.plugins.v1.2+json\r\nContent-Length: 2\r\n\r\n{}";
    let give_up = Duration::from_secs(25);
    let slow = slow_client(&d.socket, SLOW, give_up);
    // A client that connects and never sends a byte.
    let idle = slow_client(&d.socket, b"", give_up);
    // A client whose headers are complete but whose body never comes.
    let mut stuck_body = UnixStream::connect(&d.socket).unwrap();
    stuck_body
        .write_all(b"POST /VolumeDriver.Create HTTP/1.1\r\nHost: plugin\r\nContent-Length: 100\r\n\r\n{\"Na")
        .unwrap();
    let stuck_started = Instant::now();
    let stuck = std::thread::spawn(move || {
        stuck_body
            .set_read_timeout(Some(Duration::from_secs(25)))
            .unwrap();
        let mut buf = Vec::new();
        let _ = stuck_body.read_to_end(&mut buf);
        (stuck_started.elapsed(), buf)
    });

    // Meanwhile, other clients are served at once.
    let mut problems = Vec::new();
    let timed =
        |what: &str, problems: &mut Vec<String>, f: &mut dyn FnMut() -> Result<(), String>| {
            let t = Instant::now();
            if let Err(e) = f() {
                problems.push(format!(
                    "{what} failed while a slow client is connected: {e}"
                ));
            }
            let took = t.elapsed();
            if took >= Duration::from_secs(1) {
                problems.push(format!(
                    "{what} took {took:?} while a slow client is connected"
                ));
            }
        };
    let vol = unique_name("slowloris-vol");
    let id = new_id();
    for round in 0..3 {
        timed(&format!("List (round {round})"), &mut problems, &mut || {
            d.list().map(|_| ())
        });
        std::thread::sleep(Duration::from_millis(1500)); // let the slow client send more bytes
    }
    timed("Create", &mut problems, &mut || {
        d.create(&vol, &[("bucket", &b)])
    });
    timed("Mount", &mut problems, &mut || {
        d.mount(&vol, &id).map(|_| ())
    });
    timed("Get", &mut problems, &mut || d.get(&vol).map(|_| ()));
    timed("Unmount", &mut problems, &mut || d.unmount(&vol, &id));
    timed("List (last)", &mut problems, &mut || d.list().map(|_| ()));

    let (slow_closed, slow_got) = slow.join().unwrap();
    let (idle_closed, idle_got) = idle.join().unwrap();
    let (stuck_closed, stuck_got) = stuck.join().unwrap();
    match slow_closed {
        None => problems.push(format!(
            "the slow client (1 byte/s) was still connected after {give_up:?}"
        )),
        Some(t) if t > Duration::from_secs(15) => {
            problems.push(format!("the slow client was cut only after {t:?}"))
        }
        Some(t) => say(&format!("slow client cut after {t:?}")),
    }
    if slow_got.windows(7).any(|w| w == b"Volumes") {
        problems.push("the slow client's request was served".into());
    }
    match idle_closed {
        None => problems.push(format!(
            "the idle client (no byte sent) was still connected after {give_up:?}"
        )),
        Some(t) if t > Duration::from_secs(15) => {
            problems.push(format!("the idle client was cut only after {t:?}"))
        }
        Some(t) => say(&format!(
            "idle client cut after {t:?} ({} bytes)",
            idle_got.len()
        )),
    }
    if stuck_closed > Duration::from_secs(15) {
        problems.push(format!(
            "the client that never sent its body was cut only after {stuck_closed:?}"
        ));
    } else {
        say(&format!(
            "stuck-body client cut after {stuck_closed:?}: {:?}",
            String::from_utf8_lossy(&stuck_got)
        ));
    }
    if !d.list_names().contains(&vol) || d.list_names().len() != 1 {
        problems.push(format!("List after the slow clients: {:?}", d.list_names()));
    }
    wait_nothing_mounted(&d, "after the Unmount", Duration::from_secs(15));
    assert!(
        problems.is_empty(),
        "slow clients:\n{}\n{}",
        problems.join("\n"),
        d.logs_tail(30)
    );
}
