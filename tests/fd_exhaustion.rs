//! A component whose file descriptors run out (EMFILE on every accept until a connection closes)
//! waits between accept attempts instead of spinning, and serves again once descriptors free up.
//! Found by hand: a plaintext Doppler at `ulimit -n 40` with 60 idle connections burned 1.9 CPU
//! seconds in 2 s.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// utime + stime of `pid`, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

/// Whether `addr` answers an HTTP/2 preface with a SETTINGS frame within a second.
fn serves_http2(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else { return false };
    stream.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    if stream.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0").is_err() {
        return false;
    }
    let mut header = [0u8; 9];
    stream.read_exact(&mut header).is_ok() && header[3] == 0x4
}

#[test]
fn a_doppler_out_of_file_descriptors_waits_instead_of_spinning() {
    let (grpc, metrics) = (free_addr(), free_addr());
    let command = format!(
        "ulimit -n 40 && exec {} doppler --grpc-addr {grpc} --metrics-addr {metrics}",
        env!("CARGO_BIN_EXE_loggregator")
    );
    let child =
        Command::new("sh").args(["-c", &command]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("starts");
    let doppler = Killed(child);
    let started = Instant::now();
    while !serves_http2(grpc) {
        assert!(started.elapsed() < Duration::from_secs(20), "the Doppler did not start serving");
        std::thread::sleep(Duration::from_millis(20));
    }

    // More idle connections than descriptors: every further accept fails with EMFILE.
    let held: Vec<TcpStream> = (0..60).map(|_| TcpStream::connect(grpc).unwrap()).collect();
    let before = cpu_seconds(doppler.0.id());
    std::thread::sleep(Duration::from_secs(2)); // the window CPU is measured over
    let used = cpu_seconds(doppler.0.id()) - before;
    assert!(used < 0.5, "{used:.2} CPU seconds in 2 s with its descriptors exhausted");

    drop(held);
    let started = Instant::now();
    while !serves_http2(grpc) {
        assert!(started.elapsed() < Duration::from_secs(10), "the Doppler did not serve again");
        std::thread::sleep(Duration::from_millis(20));
    }
}
