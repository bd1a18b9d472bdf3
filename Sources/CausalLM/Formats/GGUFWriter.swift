import Foundation

/// Writes GGUF v3 files (metadata and raw tensor bytes). Used to build tiny models for tests and to export.
/// The file is written under a temporary name and renamed, so a reader never sees half a file.
public struct GGUFWriter {
    public enum Value {
        case u32(UInt32), i32(Int32), f32(Float), bool(Bool), string(String), u64(UInt64)
        case strings([String]), i32s([Int32]), f32s([Float])
    }

    public struct Tensor {
        public var name: String
        public var dims: [Int]     // ggml order: dims[0] contiguous
        public var type: UInt32    // ggml type id
        public var bytes: [UInt8]
        public init(name: String, dims: [Int], type: UInt32, bytes: [UInt8]) {
            self.name = name; self.dims = dims; self.type = type; self.bytes = bytes
        }
        /// An F32 tensor.
        public init(name: String, dims: [Int], floats: [Float]) {
            self.init(name: name, dims: dims, type: 0, bytes: floats.withUnsafeBytes { Array($0) })
        }
    }

    public var metadata: [(String, Value)] = []
    public var tensors: [Tensor] = []
    public var alignment = 32

    public init() {}

    /// The whole file as bytes.
    public func serialize() -> [UInt8] {
        var out: [UInt8] = Array("GGUF".utf8)
        func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { out += $0 } }
        func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { out += $0 } }
        func str(_ s: String) { u64(UInt64(s.utf8.count)); out += Array(s.utf8) }
        u32(3)
        u64(UInt64(tensors.count))
        u64(UInt64(metadata.count))
        for (k, v) in metadata {
            str(k)
            switch v {
            case let .u32(x): u32(4); u32(x)
            case let .i32(x): u32(5); u32(UInt32(bitPattern: x))
            case let .f32(x): u32(6); u32(x.bitPattern)
            case let .bool(x): u32(7); out.append(x ? 1 : 0)
            case let .string(x): u32(8); str(x)
            case let .u64(x): u32(10); u64(x)
            case let .strings(xs): u32(9); u32(8); u64(UInt64(xs.count)); xs.forEach(str)
            case let .i32s(xs): u32(9); u32(5); u64(UInt64(xs.count)); xs.forEach { u32(UInt32(bitPattern: $0)) }
            case let .f32s(xs): u32(9); u32(6); u64(UInt64(xs.count)); xs.forEach { u32($0.bitPattern) }
            }
        }
        var offset = 0
        var offsets: [Int] = []
        for t in tensors {
            offsets.append(offset)
            offset += (t.bytes.count + alignment - 1) / alignment * alignment
        }
        for (t, off) in zip(tensors, offsets) {
            str(t.name)
            u32(UInt32(t.dims.count))
            t.dims.forEach { u64(UInt64($0)) }
            u32(t.type)
            u64(UInt64(off))
        }
        while out.count % alignment != 0 { out.append(0) }
        for t in tensors {
            out += t.bytes
            while out.count % alignment != 0 { out.append(0) }
        }
        return out
    }

    /// Writes to `path` atomically (temporary name, then rename).
    public func write(to path: String) throws {
        let tmp = path + ".tmp-\(ProcessInfo.processInfo.processIdentifier)"
        let data = Data(serialize())
        do {
            try data.write(to: URL(fileURLWithPath: tmp))
        } catch {
            throw CausalError.io(path: path, reason: "cannot write: \(error.localizedDescription)")
        }
        if rename(tmp, path) != 0 {
            try? FileManager.default.removeItem(atPath: tmp)
            throw CausalError.io(path: path, reason: "cannot rename into place: \(String(cString: strerror(errno)))")
        }
    }
}
