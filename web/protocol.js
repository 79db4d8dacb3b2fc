// The binary media header of the WebSocket protocol, version 1 (docs/protocol.md).
// 32 bytes, little-endian: magic "LC", version, kind, format, flags, reserved u16,
// frame id u64, capture pts f64 (NaN = none), width u32, height u32.

export const HEADER_SIZE = 32;
export const PROTOCOL_VERSION = 1;
export const KIND = { video: 1, audio: 2 };
export const FORMAT = { jpeg: 1, webp: 2, rgb24: 3, pcm_s16le: 16 };
export const MIME = { 1: "image/jpeg", 2: "image/webp" };
export const FLAG_REUSED = 1;

export function packMedia({ kind, format, frameId, pts, width, height, flags = 0 }, payload) {
  const bytes = new Uint8Array(HEADER_SIZE + payload.byteLength);
  const view = new DataView(bytes.buffer);
  view.setUint8(0, 0x4c); // "L"
  view.setUint8(1, 0x43); // "C"
  view.setUint8(2, PROTOCOL_VERSION);
  view.setUint8(3, kind);
  view.setUint8(4, format);
  view.setUint8(5, flags);
  view.setUint16(6, 0, true);
  view.setBigUint64(8, BigInt(frameId), true);
  view.setFloat64(16, pts ?? NaN, true);
  view.setUint32(24, width, true);
  view.setUint32(28, height, true);
  bytes.set(new Uint8Array(payload), HEADER_SIZE);
  return bytes.buffer;
}

export function unpackMedia(buffer) {
  if (buffer.byteLength < HEADER_SIZE) throw new Error(`media message of ${buffer.byteLength} bytes`);
  const view = new DataView(buffer);
  const pts = view.getFloat64(16, true);
  return {
    header: {
      version: view.getUint8(2),
      kind: view.getUint8(3),
      format: view.getUint8(4),
      flags: view.getUint8(5),
      frameId: Number(view.getBigUint64(8, true)),
      pts: Number.isNaN(pts) ? null : pts,
      width: view.getUint32(24, true),
      height: view.getUint32(28, true),
    },
    payload: new Uint8Array(buffer, HEADER_SIZE),
  };
}
