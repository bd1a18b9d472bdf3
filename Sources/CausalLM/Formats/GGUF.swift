import Foundation

// GGUF (v2, v3): the file format of llama.cpp / ggml.
// Layout: magic "GGUF" | u32 version | u64 tensor_count | u64 kv_count | kv_count × (string key, u32 type, value)
//       | tensor_count × (string name, u32 n_dims, u64 dims[n_dims], u32 ggml_type, u64 offset)
//       | padding to `general.alignment` (default 32) | tensor data (each tensor's offset relative to here).
// Strings are u64 length + UTF-8 bytes (no terminator). Arrays are u32 element type + u64 count + elements.

/// The value types of GGUF metadata.
public enum GGUFValueType: UInt32, Sendable {
    case uint8 = 0, int8, uint16, int16, uint32, int32, float32, bool, string, array, uint64, int64, float64

    var scalarSize: Int? {
        switch self {
        case .uint8, .int8, .bool: return 1
        case .uint16, .int16: return 2
        case .uint32, .int32, .float32: return 4
        case .uint64, .int64, .float64: return 8
        case .string, .array: return nil
        }
    }
}

/// An array in GGUF metadata, decoded on demand (vocabularies hold ~50k strings).
public struct GGUFArray: Sendable {
    public let elementType: GGUFValueType
    public let count: Int
    /// Byte offset of the first element in the file.
    let offset: Int
    /// For string arrays: byte offset of each string's length field, filled at parse time (validated).
    let stringOffsets: [Int]
}

/// One metadata value.
public enum GGUFValue: Sendable {
    case uint(UInt64)
    case int(Int64)
    case float(Double)
    case bool(Bool)
    case string(String)
    case array(GGUFArray)

    public var typeName: String {
        switch self {
        case .uint: return "unsigned integer"
        case .int: return "integer"
        case .float: return "float"
        case .bool: return "bool"
        case .string: return "string"
        case let .array(a): return "array of \(a.elementType)"
        }
    }
}

/// Facts about a ggml tensor type, for every type a GGUF file may carry (supported or not).
public struct GGMLType: Sendable, Equatable {
    public let id: UInt32
    public let name: String
    public let blockSize: Int
    public let blockBytes: Int

    public static let known: [UInt32: GGMLType] = {
        let rows: [(UInt32, String, Int, Int)] = [
            (0, "F32", 1, 4), (1, "F16", 1, 2), (2, "Q4_0", 32, 18), (3, "Q4_1", 32, 20),
            (6, "Q5_0", 32, 22), (7, "Q5_1", 32, 24), (8, "Q8_0", 32, 34), (9, "Q8_1", 32, 36),
            (10, "Q2_K", 256, 84), (11, "Q3_K", 256, 110), (12, "Q4_K", 256, 144), (13, "Q5_K", 256, 176),
            (14, "Q6_K", 256, 210), (15, "Q8_K", 256, 292), (16, "IQ2_XXS", 256, 66), (17, "IQ2_XS", 256, 74),
            (18, "IQ3_XXS", 256, 98), (19, "IQ1_S", 256, 50), (20, "IQ4_NL", 32, 18), (21, "IQ3_S", 256, 110),
            (22, "IQ2_S", 256, 82), (23, "IQ4_XS", 256, 136), (24, "I8", 1, 1), (25, "I16", 1, 2),
            (26, "I32", 1, 4), (27, "I64", 1, 8), (28, "F64", 1, 8), (29, "IQ1_M", 256, 56), (30, "BF16", 1, 2),
        ]
        var d: [UInt32: GGMLType] = [:]
        for (id, n, bs, bb) in rows { d[id] = GGMLType(id: id, name: n, blockSize: bs, blockBytes: bb) }
        return d
    }()
}

/// A tensor's description and its bytes inside the mapped file.
public struct GGUFTensor: Sendable {
    public let name: String
    /// ggml order: `dims[0]` is the contiguous (innermost) dimension.
    public let dims: [Int]
    public let type: GGMLType
    /// Absolute byte offset of the data in the file.
    public let fileOffset: Int
    public let byteCount: Int
    public var elementCount: Int { dims.reduce(1, *) }
}

/// A parsed, validated GGUF file. Tensor data stays in the memory map.
public final class GGUFFile: @unchecked Sendable {
    public let path: String
    public let version: UInt32
    public let metadata: [String: GGUFValue]
    /// Metadata keys in file order.
    public let metadataKeys: [String]
    public let tensors: [GGUFTensor]
    public let tensorsByName: [String: GGUFTensor]
    public let alignment: Int
    public let dataOffset: Int
    let file: MappedFile

    public convenience init(path: String) throws {
        try self.init(file: MappedFile(path: path))
    }

    public init(file: MappedFile) throws {
        self.file = file
        self.path = file.path
        var r = Reader(base: file.base, count: file.count, path: file.path)
        let magic = try r.bytes(4, field: "magic")
        guard magic == [0x47, 0x47, 0x55, 0x46] else {
            throw CausalError.badFormat(path: path, field: "magic", reason: "not a GGUF file (expected 'GGUF', found \(SHA256.hex(magic)))")
        }
        version = try r.u32(field: "version")
        guard version == 2 || version == 3 else {
            throw CausalError.badFormat(path: path, field: "version", reason: "unsupported GGUF version \(version) (supported: 2, 3)")
        }
        let tensorCount = try r.u64(field: "tensor_count")
        let kvCount = try r.u64(field: "kv_count")
        // Every kv pair takes at least 8+1+4+1 bytes and every tensor info at least 8+1+4+8+4+8 bytes.
        guard kvCount <= UInt64(file.count / 14) else {
            throw CausalError.badFormat(path: path, field: "kv_count", reason: "\(kvCount) metadata entries cannot fit in a \(file.count)-byte file")
        }
        guard tensorCount <= UInt64(file.count / 33) else {
            throw CausalError.badFormat(path: path, field: "tensor_count", reason: "\(tensorCount) tensors cannot fit in a \(file.count)-byte file")
        }
        var md: [String: GGUFValue] = [:]
        var keys: [String] = []
        for i in 0..<Int(kvCount) {
            let key = try r.string(field: "metadata key #\(i)")
            let rawType = try r.u32(field: "type of '\(key)'")
            guard let t = GGUFValueType(rawValue: rawType) else {
                throw CausalError.badFormat(path: path, field: key, reason: "unknown metadata value type \(rawType)")
            }
            let v = try r.value(type: t, field: key)
            if md[key] == nil { keys.append(key) }
            md[key] = v
        }
        metadata = md
        metadataKeys = keys

        var align = 32
        if let a = md["general.alignment"] {
            guard case let .uint(u) = a, u > 0, u <= 1 << 20, u & (u - 1) == 0 else {
                throw CausalError.badFormat(path: path, field: "general.alignment", reason: "must be a power of two unsigned integer, got \(a)")
            }
            align = Int(u)
        }
        alignment = align

        struct Info { let name: String; let dims: [Int]; let type: GGMLType; let offset: UInt64 }
        var infos: [Info] = []
        infos.reserveCapacity(Int(tensorCount))
        for i in 0..<Int(tensorCount) {
            let name = try r.string(field: "tensor #\(i) name")
            let nd = try r.u32(field: "tensor '\(name)' n_dims")
            guard nd >= 1 && nd <= 4 else {
                throw CausalError.badTensor(path: path, tensor: name, reason: "n_dims \(nd) outside 1...4")
            }
            var dims: [Int] = []
            var product: UInt64 = 1
            for d in 0..<Int(nd) {
                let v = try r.u64(field: "tensor '\(name)' dims[\(d)]")
                let (p, overflow) = product.multipliedReportingOverflow(by: v)
                guard v > 0, v <= UInt64(Int32.max), !overflow, p <= UInt64(Int.max / 8) else {
                    throw CausalError.badTensor(path: path, tensor: name, reason: "dimension \(d) = \(v) is zero or overflows the element count")
                }
                product = p
                dims.append(Int(v))
            }
            let rawType = try r.u32(field: "tensor '\(name)' type")
            guard let type = GGMLType.known[rawType] else {
                throw CausalError.badTensor(path: path, tensor: name, reason: "unknown tensor type \(rawType)")
            }
            guard dims[0] % type.blockSize == 0 else {
                throw CausalError.badTensor(path: path, tensor: name, reason: "row length \(dims[0]) is not a multiple of the \(type.name) block size \(type.blockSize)")
            }
            let offset = try r.u64(field: "tensor '\(name)' offset")
            infos.append(Info(name: name, dims: dims, type: type, offset: offset))
        }
        let headerEnd = r.pos
        let dataStart = (headerEnd + align - 1) / align * align
        dataOffset = dataStart
        var list: [GGUFTensor] = []
        var byName: [String: GGUFTensor] = [:]
        for info in infos {
            let elements = info.dims.reduce(1, *)
            let bytes = elements / info.type.blockSize * info.type.blockBytes
            guard info.offset % UInt64(align) == 0 else {
                throw CausalError.badTensor(path: path, tensor: info.name, reason: "data offset \(info.offset) is not aligned to \(align)")
            }
            guard info.offset <= UInt64(file.count), dataStart + Int(info.offset) + bytes <= file.count else {
                throw CausalError.badTensor(path: path, tensor: info.name, reason: "data (offset \(info.offset), \(bytes) bytes) runs past the end of the file (\(file.count) bytes): file truncated?")
            }
            guard byName[info.name] == nil else {
                throw CausalError.badTensor(path: path, tensor: info.name, reason: "appears twice")
            }
            let t = GGUFTensor(name: info.name, dims: info.dims, type: info.type, fileOffset: dataStart + Int(info.offset), byteCount: bytes)
            list.append(t)
            byName[info.name] = t
        }
        tensors = list
        tensorsByName = byName
    }

    /// Pointer to a tensor's bytes inside the map.
    public func data(_ t: GGUFTensor) -> UnsafeRawPointer { file.base + t.fileOffset }

    public func tensor(_ name: String) throws -> GGUFTensor {
        guard let t = tensorsByName[name] else { throw CausalError.badTensor(path: path, tensor: name, reason: "missing from the file") }
        return t
    }

    // MARK: Typed metadata access (errors name the key)

    public func has(_ key: String) -> Bool { metadata[key] != nil }

    public func string(_ key: String) throws -> String {
        guard let v = metadata[key] else { throw missing(key) }
        guard case let .string(s) = v else { throw wrongType(key, "string", v) }
        return s
    }

    public func int(_ key: String) throws -> Int {
        guard let v = metadata[key] else { throw missing(key) }
        switch v {
        case let .uint(u) where u <= UInt64(Int.max): return Int(u)
        case let .int(i): return Int(i)
        default: throw wrongType(key, "integer", v)
        }
    }

    public func float(_ key: String) throws -> Double {
        guard let v = metadata[key] else { throw missing(key) }
        switch v {
        case let .float(f): return f
        case let .uint(u): return Double(u)
        case let .int(i): return Double(i)
        default: throw wrongType(key, "number", v)
        }
    }

    public func bool(_ key: String) throws -> Bool {
        guard let v = metadata[key] else { throw missing(key) }
        guard case let .bool(b) = v else { throw wrongType(key, "bool", v) }
        return b
    }

    public func array(_ key: String) throws -> GGUFArray {
        guard let v = metadata[key] else { throw missing(key) }
        guard case let .array(a) = v else { throw wrongType(key, "array", v) }
        return a
    }

    public func stringArray(_ key: String) throws -> [String] {
        let a = try array(key)
        guard a.elementType == .string else { throw wrongType(key, "array of string", .array(a)) }
        return a.stringOffsets.map { off in
            let len = Int(file.base.loadUnaligned(fromByteOffset: off, as: UInt64.self))
            let buf = UnsafeRawBufferPointer(start: file.base + off + 8, count: len)
            return String(decoding: buf, as: UTF8.self)
        }
    }

    public func intArray(_ key: String) throws -> [Int] {
        let a = try array(key)
        guard let size = a.elementType.scalarSize, a.elementType != .float32, a.elementType != .float64, a.elementType != .bool else {
            throw wrongType(key, "array of integers", .array(a))
        }
        return (0..<a.count).map { i in
            let p = file.base + a.offset + i * size
            switch a.elementType {
            case .uint8: return Int(p.load(as: UInt8.self))
            case .int8: return Int(p.load(as: Int8.self))
            case .uint16: return Int(p.loadUnaligned(as: UInt16.self))
            case .int16: return Int(p.loadUnaligned(as: Int16.self))
            case .uint32: return Int(p.loadUnaligned(as: UInt32.self))
            case .int32: return Int(p.loadUnaligned(as: Int32.self))
            case .uint64: return Int(truncatingIfNeeded: p.loadUnaligned(as: UInt64.self))
            default: return Int(p.loadUnaligned(as: Int64.self))
            }
        }
    }

    private func missing(_ key: String) -> CausalError {
        .badFormat(path: path, field: key, reason: "required metadata key is missing")
    }
    private func wrongType(_ key: String, _ want: String, _ v: GGUFValue) -> CausalError {
        .badFormat(path: path, field: key, reason: "expected \(want), found \(v.typeName)")
    }
}

/// Bounds-checked little-endian reader over the map. Every read names the field it was reading.
private struct Reader {
    let base: UnsafeRawPointer
    let count: Int
    let path: String
    var pos = 0

    mutating func need(_ n: Int, field: String) throws {
        guard n >= 0, n <= count - pos else {
            throw CausalError.badFormat(path: path, field: field, reason: "file ends at byte \(count) while reading \(n) bytes at \(pos): truncated or corrupt header")
        }
    }
    mutating func bytes(_ n: Int, field: String) throws -> [UInt8] {
        try need(n, field: field)
        defer { pos += n }
        return Array(UnsafeRawBufferPointer(start: base + pos, count: n))
    }
    mutating func scalar<T: FixedWidthInteger>(_: T.Type, field: String) throws -> T {
        try need(MemoryLayout<T>.size, field: field)
        defer { pos += MemoryLayout<T>.size }
        return T(littleEndian: base.loadUnaligned(fromByteOffset: pos, as: T.self))
    }
    mutating func u32(field: String) throws -> UInt32 { try scalar(UInt32.self, field: field) }
    mutating func u64(field: String) throws -> UInt64 { try scalar(UInt64.self, field: field) }

    mutating func stringLength(field: String) throws -> Int {
        let n = try u64(field: field)
        guard n <= UInt64(count - pos) else {
            throw CausalError.badFormat(path: path, field: field, reason: "string length \(n) runs past the end of the file")
        }
        return Int(n)
    }
    mutating func string(field: String) throws -> String {
        let n = try stringLength(field: field)
        defer { pos += n }
        return String(decoding: UnsafeRawBufferPointer(start: base + pos, count: n), as: UTF8.self)
    }

    mutating func value(type: GGUFValueType, field: String) throws -> GGUFValue {
        switch type {
        case .uint8: return .uint(UInt64(try scalar(UInt8.self, field: field)))
        case .int8: return .int(Int64(try scalar(Int8.self, field: field)))
        case .uint16: return .uint(UInt64(try scalar(UInt16.self, field: field)))
        case .int16: return .int(Int64(try scalar(Int16.self, field: field)))
        case .uint32: return .uint(UInt64(try u32(field: field)))
        case .int32: return .int(Int64(try scalar(Int32.self, field: field)))
        case .uint64: return .uint(try u64(field: field))
        case .int64: return .int(try scalar(Int64.self, field: field))
        case .float32: return .float(Double(Float(bitPattern: try u32(field: field))))
        case .float64: return .float(Double(bitPattern: try u64(field: field)))
        case .bool:
            let b = try scalar(UInt8.self, field: field)
            guard b <= 1 else { throw CausalError.badFormat(path: path, field: field, reason: "bool value \(b) is neither 0 nor 1") }
            return .bool(b == 1)
        case .string: return .string(try string(field: field))
        case .array:
            let rawT = try u32(field: field)
            guard let et = GGUFValueType(rawValue: rawT) else {
                throw CausalError.badFormat(path: path, field: field, reason: "unknown array element type \(rawT)")
            }
            guard et != .array else {
                throw CausalError.badFormat(path: path, field: field, reason: "nested arrays are not supported")
            }
            let n = try u64(field: field)
            let start = pos
            if let size = et.scalarSize {
                guard n <= UInt64((count - pos) / size) else {
                    throw CausalError.badFormat(path: path, field: field, reason: "array of \(n) elements runs past the end of the file")
                }
                pos += Int(n) * size
                return .array(GGUFArray(elementType: et, count: Int(n), offset: start, stringOffsets: []))
            }
            // Strings: each takes at least 8 bytes.
            guard n <= UInt64((count - pos) / 8) else {
                throw CausalError.badFormat(path: path, field: field, reason: "array of \(n) strings runs past the end of the file")
            }
            var offs: [Int] = []
            offs.reserveCapacity(Int(n))
            for i in 0..<Int(n) {
                offs.append(pos)
                let len = try stringLength(field: "\(field)[\(i)]")
                pos += len
            }
            return .array(GGUFArray(elementType: et, count: Int(n), offset: start, stringOffsets: offs))
        }
    }
}
