import Foundation
import CausalKernels

// safetensors (https://github.com/huggingface/safetensors): the checkpoint format of Hugging Face models.
// Layout: u64 little-endian N | N bytes of UTF-8 JSON (may end in spaces) | data section.
// The JSON maps each tensor name to {"dtype": "F32", "shape": [d0, d1, ...], "data_offsets": [begin, end]}, offsets
// relative to the start of the data section, row-major (d0 outermost); an optional "__metadata__" maps strings to
// strings. Sharded checkpoints add `model.safetensors.index.json`: {"weight_map": {tensor name: shard file name}}.
//
// Every header is validated before any tensor is used: the header fits the file and a sane limit, the JSON is well
// formed without duplicate names, each tensor's byte range lies inside the file, matches its shape and dtype exactly
// and overlaps no other tensor. Tensor data stays in the memory map.

/// The element types a safetensors header may name. Models read only the float types (F32, F16, BF16) as weights;
/// the others are accepted in a file (e.g. the I64 `position_ids` buffer of older BERT checkpoints) but refused
/// when a model asks for them as weights.
public enum SafetensorsDType: String, Sendable, CaseIterable {
    case bool = "BOOL", u8 = "U8", i8 = "I8", f8e4m3 = "F8_E4M3", f8e5m2 = "F8_E5M2"
    case i16 = "I16", u16 = "U16", f16 = "F16", bf16 = "BF16"
    case i32 = "I32", u32 = "U32", f32 = "F32"
    case i64 = "I64", u64 = "U64", f64 = "F64"

    /// Bytes per element.
    public var size: Int {
        switch self {
        case .bool, .u8, .i8, .f8e4m3, .f8e5m2: return 1
        case .i16, .u16, .f16, .bf16: return 2
        case .i32, .u32, .f32: return 4
        case .i64, .u64, .f64: return 8
        }
    }

    /// The kernel type for the float types models use as weights; nil for the others.
    public var weightType: DType? {
        switch self {
        case .f32: return .f32
        case .f16: return .f16
        case .bf16: return .bf16
        default: return nil
        }
    }
}

/// One tensor of a safetensors file.
public struct SafetensorsTensor: Sendable, Equatable {
    public let name: String
    public let dtype: SafetensorsDType
    /// Row-major: `shape[0]` is the outermost dimension (PyTorch order).
    public let shape: [Int]
    /// Absolute byte offset of the data in the file.
    public let fileOffset: Int
    public let byteCount: Int
    public var elementCount: Int { shape.reduce(1, *) }
}

/// A parsed, validated `.safetensors` file. Tensor data stays in the memory map.
public final class SafetensorsFile: @unchecked Sendable {
    public let path: String
    /// The optional `__metadata__` strings.
    public let metadata: [String: String]
    /// Tensors in data order.
    public let tensors: [SafetensorsTensor]
    public let tensorsByName: [String: SafetensorsTensor]
    /// Absolute offset of the data section.
    public let dataOffset: Int
    let file: MappedFile

    /// Largest header accepted (the format's own reader uses the same limit).
    public static let maxHeaderBytes = 100_000_000

    public convenience init(path: String) throws {
        try self.init(file: MappedFile(path: path))
    }

    public init(file: MappedFile) throws {
        self.file = file
        let path = file.path
        self.path = path
        func bad(_ field: String, _ reason: String) -> CausalError { .badFormat(path: path, field: field, reason: reason) }

        guard file.count >= 8 else {
            throw bad("header length", "the file has \(file.count) bytes, fewer than the 8-byte header length: truncated or not a safetensors file")
        }
        let n = UInt64(littleEndian: file.base.loadUnaligned(as: UInt64.self))
        guard n <= UInt64(Self.maxHeaderBytes) else {
            throw bad("header length", "\(n) bytes exceeds the limit of \(Self.maxHeaderBytes): not a safetensors file?")
        }
        guard n >= 2 else { throw bad("header length", "\(n) bytes is too short for a JSON header") }
        guard Int(n) <= file.count - 8 else {
            throw bad("header length", "\(n) bytes runs past the end of the file (\(file.count) bytes): truncated")
        }
        let headerBytes = UnsafeRawBufferPointer(start: file.base + 8, count: Int(n))
        guard headerBytes[0] == UInt8(ascii: "{") else {
            throw bad("header", "does not start with '{': not a safetensors file")
        }
        let header: HFJSON
        do { header = try HFJSON.parse(headerBytes, rejectDuplicateKeys: true) } catch let e as HFJSON.SyntaxError {
            throw bad("header", e.description)
        }
        guard case let .object(entries) = header else { throw bad("header", "must be a JSON object") }

        let dataStart = 8 + Int(n)
        let dataBytes = file.count - dataStart
        dataOffset = dataStart
        var meta: [String: String] = [:]
        var list: [SafetensorsTensor] = []
        for (name, entry) in entries.members {
            if name == "__metadata__" {
                guard case let .object(m) = entry else { throw bad("__metadata__", "must be an object of strings, found \(entry.typeName)") }
                for (k, v) in m.members {
                    guard let s = v.stringValue else { throw bad("__metadata__", "value of '\(k)' must be a string, found \(v.typeName)") }
                    meta[k] = s
                }
                continue
            }
            func badT(_ reason: String) -> CausalError { .badTensor(path: path, tensor: name, reason: reason) }
            guard case let .object(info) = entry else { throw badT("header entry must be an object, found \(entry.typeName)") }
            guard let dt = info["dtype"]?.stringValue else {
                throw badT(info["dtype"] == nil ? "header entry has no 'dtype'" : "'dtype' must be a string")
            }
            guard let dtype = SafetensorsDType(rawValue: dt) else {
                throw badT("unknown dtype '\(dt)' (known: \(SafetensorsDType.allCases.map(\.rawValue).joined(separator: ", ")))")
            }
            guard let shapeJSON = info["shape"]?.arrayValue else {
                throw badT(info["shape"] == nil ? "header entry has no 'shape'" : "'shape' must be an array of integers")
            }
            var shape: [Int] = []
            var elements = 1
            for (d, v) in shapeJSON.enumerated() {
                guard let x = v.intValue, x >= 0 else { throw badT("shape[\(d)] must be a non-negative integer, found \(v.brief)") }
                let (p, overflow) = elements.multipliedReportingOverflow(by: x)
                guard !overflow else { throw badT("shape \(shapeJSON.map(\.brief)) overflows the element count") }
                elements = p
                shape.append(x)
            }
            let (bytes, overflow) = elements.multipliedReportingOverflow(by: dtype.size)
            guard !overflow else { throw badT("shape \(shape) of \(dt) overflows the byte count") }
            guard let offs = info["data_offsets"]?.arrayValue, offs.count == 2,
                  let begin = offs[0].intValue, let end = offs[1].intValue, begin >= 0, end >= begin else {
                throw badT("'data_offsets' must be two integers [begin, end] with 0 <= begin <= end, found \(info["data_offsets"]?.brief ?? "nothing")")
            }
            guard end - begin == bytes else {
                throw badT("data_offsets [\(begin), \(end)) hold \(end - begin) bytes but shape \(shape) of \(dt) needs \(bytes)")
            }
            guard end <= dataBytes else {
                throw badT("data_offsets [\(begin), \(end)) run past the end of the data section (\(dataBytes) bytes): file truncated?")
            }
            list.append(SafetensorsTensor(name: name, dtype: dtype, shape: shape, fileOffset: dataStart + begin, byteCount: bytes))
        }
        list.sort { ($0.fileOffset, $0.byteCount, $0.name) < ($1.fileOffset, $1.byteCount, $1.name) }
        // Byte ranges may not overlap (empty tensors take no bytes).
        var prev: SafetensorsTensor?
        for t in list where t.byteCount > 0 {
            if let p = prev, t.fileOffset < p.fileOffset + p.byteCount {
                throw CausalError.badTensor(path: path, tensor: t.name, reason: "data_offsets [\(t.fileOffset - dataStart), \(t.fileOffset - dataStart + t.byteCount)) overlap those of '\(p.name)' [\(p.fileOffset - dataStart), \(p.fileOffset - dataStart + p.byteCount))")
            }
            prev = t
        }
        metadata = meta
        tensors = list
        tensorsByName = Dictionary(uniqueKeysWithValues: list.map { ($0.name, $0) })
    }

    /// Pointer to a tensor's bytes inside the map.
    public func data(_ t: SafetensorsTensor) -> UnsafeRawPointer { file.base + t.fileOffset }

    public func tensor(_ name: String) throws -> SafetensorsTensor {
        guard let t = tensorsByName[name] else { throw CausalError.badTensor(path: path, tensor: name, reason: "missing from the file") }
        return t
    }
}

/// A checkpoint of one or more safetensors files: a single `model.safetensors`, or the shards named by a
/// `model.safetensors.index.json`. Gives weights as `WeightMatrix` views into the maps (copied only when a
/// tensor's data is not aligned to its element size), with shape and dtype checks whose errors name the file and
/// the tensor.
public final class SafetensorsCheckpoint: @unchecked Sendable {
    /// The file or directory the checkpoint was opened from.
    public let path: String
    public let files: [SafetensorsFile]
    private let location: [String: (file: Int, tensor: SafetensorsTensor)]
    private var owned: [UnsafeMutableRawPointer] = []
    private let lock = NSLock()

    /// Opens a `.safetensors` file, a `.safetensors.index.json` index, or a directory holding either
    /// (`model.safetensors.index.json` is preferred over `model.safetensors`).
    public convenience init(path: String) throws {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else {
            throw CausalError.io(path: path, reason: "no such file or directory")
        }
        if isDir.boolValue {
            let dir = URL(fileURLWithPath: path)
            let index = dir.appendingPathComponent("model.safetensors.index.json").path
            let single = dir.appendingPathComponent("model.safetensors").path
            if FileManager.default.fileExists(atPath: index) { try self.init(indexPath: index) }
            else if FileManager.default.fileExists(atPath: single) { try self.init(files: [SafetensorsFile(path: single)], path: single) }
            else { throw CausalError.io(path: path, reason: "no model.safetensors or model.safetensors.index.json in this directory") }
        } else if path.hasSuffix(".json") {
            try self.init(indexPath: path)
        } else {
            try self.init(files: [SafetensorsFile(path: path)], path: path)
        }
    }

    /// Opens the shards listed by an index file.
    public convenience init(indexPath: String) throws {
        let root = try HFJSON.parse(contentsOf: indexPath)
        guard let map = root["weight_map"]?.objectValue else {
            throw CausalError.badFormat(path: indexPath, field: "weight_map", reason: root["weight_map"] == nil ? "missing" : "must be an object of tensor name → file name")
        }
        let dir = URL(fileURLWithPath: indexPath).deletingLastPathComponent()
        var shardNames: [String] = []
        var assignment: [String: String] = [:]
        for (tensor, v) in map.members {
            guard let f = v.stringValue else {
                throw CausalError.badFormat(path: indexPath, field: "weight_map.\(tensor)", reason: "must be a file name, found \(v.typeName)")
            }
            // Shards must sit beside the index: no directories, no escaping it.
            guard !f.isEmpty, !f.contains("/"), !f.contains("\\"), f != ".", f != ".." else {
                throw CausalError.badFormat(path: indexPath, field: "weight_map.\(tensor)", reason: "'\(f)' is not a plain file name beside the index")
            }
            assignment[tensor] = f
            if !shardNames.contains(f) { shardNames.append(f) }
        }
        shardNames.sort()
        let files = try shardNames.map { try SafetensorsFile(path: dir.appendingPathComponent($0).path) }
        try self.init(files: files, path: indexPath, assignment: assignment)
    }

    /// A checkpoint over already opened files. With `assignment` (tensor name → file name), each tensor is taken from
    /// its named file, which must hold it; without it, tensor names must be unique across the files.
    public init(files: [SafetensorsFile], path: String, assignment: [String: String]? = nil) throws {
        self.path = path
        self.files = files
        var loc: [String: (file: Int, tensor: SafetensorsTensor)] = [:]
        if let assignment {
            let byName = Dictionary(files.enumerated().map { (URL(fileURLWithPath: $0.element.path).lastPathComponent, $0.offset) },
                                    uniquingKeysWith: { a, _ in a })
            for (tensor, fileName) in assignment {
                guard let fi = byName[fileName] else {
                    throw CausalError.badFormat(path: path, field: "weight_map.\(tensor)", reason: "shard '\(fileName)' was not opened")
                }
                guard let t = files[fi].tensorsByName[tensor] else {
                    throw CausalError.badTensor(path: files[fi].path, tensor: tensor, reason: "the index \(path) places it in this shard, which does not hold it")
                }
                loc[tensor] = (fi, t)
            }
        } else {
            for (fi, f) in files.enumerated() {
                for t in f.tensors {
                    if let prev = loc[t.name] {
                        throw CausalError.badTensor(path: f.path, tensor: t.name, reason: "also present in \(files[prev.file].path)")
                    }
                    loc[t.name] = (fi, t)
                }
            }
        }
        location = loc
    }

    deinit { owned.forEach { $0.deallocate() } }

    /// Every tensor name, sorted.
    public var tensorNames: [String] { location.keys.sorted() }

    public func has(_ name: String) -> Bool { location[name] != nil }

    /// The tensor and the file holding it.
    public func tensor(_ name: String) throws -> (file: SafetensorsFile, tensor: SafetensorsTensor) {
        guard let l = location[name] else {
            throw CausalError.badTensor(path: path, tensor: name, reason: "missing from the checkpoint")
        }
        return (files[l.file], l.tensor)
    }

    /// A (rows, cols) float matrix (F32, F16 or BF16), as PyTorch stores `nn.Linear` weights (out, in) and embedding
    /// tables (vocabulary, hidden): row-major, one output per row.
    public func matrix(_ name: String, rows: Int, cols: Int) throws -> WeightMatrix {
        let (f, t) = try tensor(name)
        guard t.shape == [rows, cols] else {
            throw CausalError.badTensor(path: f.path, tensor: name, reason: "shape \(t.shape) does not match the expected [\(rows), \(cols)]")
        }
        return WeightMatrix(dtype: try weightType(f, t), data: try aligned(f, t), rows: rows, cols: cols)
    }

    /// A 1-D float tensor of `count` elements, converted to fp32.
    public func vector(_ name: String, count: Int) throws -> [Float] {
        let (f, t) = try tensor(name)
        guard t.shape == [count] else {
            throw CausalError.badTensor(path: f.path, tensor: name, reason: "shape \(t.shape) does not match the expected [\(count)]")
        }
        let dt = try weightType(f, t)
        var out = [Float](repeating: 0, count: count)
        guard count > 0 else { return out }
        let m = WeightMatrix(dtype: dt, data: try aligned(f, t), rows: 1, cols: count)
        out.withUnsafeMutableBufferPointer { dequantize(m, row: 0, into: $0.baseAddress!) }
        return out
    }

    private func weightType(_ f: SafetensorsFile, _ t: SafetensorsTensor) throws -> DType {
        guard let dt = t.dtype.weightType else {
            throw CausalError.badTensor(path: f.path, tensor: t.name, reason: "dtype \(t.dtype.rawValue) is not supported for weights (supported: F32, F16, BF16)")
        }
        return dt
    }

    /// The tensor's data, copied into owned memory when the map's copy is not aligned to the element size.
    private func aligned(_ f: SafetensorsFile, _ t: SafetensorsTensor) throws -> UnsafeRawPointer {
        let p = f.data(t)
        if Int(bitPattern: p) % t.dtype.size == 0 { return p }
        let copy = UnsafeMutableRawPointer.allocate(byteCount: max(t.byteCount, 1), alignment: 64)
        copy.copyMemory(from: p, byteCount: t.byteCount)
        lock.lock(); owned.append(copy); lock.unlock()
        return UnsafeRawPointer(copy)
    }
}
