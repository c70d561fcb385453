//! RTP streams as pcap files for SIPp's `play_pcap_audio` (Ethernet/IPv4/UDP/RTP, one packet per
//! 20 ms), so a SIPp phone can play a known tone: SIPp replays the UDP payloads with the file's
//! timing to the media address of the SDP it got.

use std::path::Path;
use std::time::Duration;

use srbridge::media::g711;

/// Writes `duration` of a PCMU sine of `freq_hz` at `amplitude` (0..=1 of full scale), 20 ms per
/// packet, payload type 0, marker on the first packet.
pub fn write_pcmu_tone_pcap(path: &Path, freq_hz: f64, amplitude: f64, duration: Duration) {
    let samples = super::audio::tone(freq_hz, amplitude, duration, 8000);
    let mut out = Vec::new();
    // Global header: magic, v2.4, UTC, accuracy 0, snaplen 65535, Ethernet.
    out.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&4u16.to_le_bytes());
    out.extend_from_slice(&0i32.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&65535u32.to_le_bytes());
    out.extend_from_slice(&1u32.to_le_bytes());
    let ssrc = 0x5eed_0001u32;
    for (i, chunk) in samples.chunks_exact(160).enumerate() {
        let pcm: Vec<i16> = chunk
            .iter()
            .map(|s| (f64::from(*s) * 32767.0).round() as i16)
            .collect();
        let mut payload = vec![0u8; 160];
        g711::ulaw_encode(&pcm, &mut payload);
        let mut rtp = Vec::with_capacity(172);
        rtp.push(0x80);
        rtp.push(if i == 0 { 0x80 } else { 0x00 });
        rtp.extend_from_slice(&(i as u16).to_be_bytes());
        rtp.extend_from_slice(&((i as u32) * 160).to_be_bytes());
        rtp.extend_from_slice(&ssrc.to_be_bytes());
        rtp.extend_from_slice(&payload);
        let frame = ethernet_ipv4_udp(6000, 6000, &rtp);
        let at = Duration::from_millis(20 * i as u64);
        out.extend_from_slice(&(at.as_secs() as u32).to_le_bytes());
        out.extend_from_slice(&at.subsec_micros().to_le_bytes());
        out.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        out.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        out.extend_from_slice(&frame);
    }
    std::fs::write(path, out).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

fn ethernet_ipv4_udp(src_port: u16, dst_port: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + 20 + 8 + payload.len());
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x08, 0x00]);
    let total = (20 + 8 + payload.len()) as u16;
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&[127, 0, 0, 1]);
    ip[16..20].copy_from_slice(&[127, 0, 0, 1]);
    let sum = ip
        .chunks_exact(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum::<u32>();
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = !(((sum & 0xffff) + (sum >> 16)) as u16);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&src_port.to_be_bytes());
    f.extend_from_slice(&dst_port.to_be_bytes());
    f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    f
}
