import Foundation

// Hugging Face's JSON files: `config.json` (model hyper-parameters), `tokenizer.json`, the safetensors header and
// `model.safetensors.index.json`.
//
// `HFJSON` is a strict RFC 8259 parser over UTF-8 bytes. It keeps integers apart from other numbers (so a config
// field that must be an integer can be checked), can reject duplicate object keys (the safetensors header), and
// reports the byte offset of a syntax error. `ConfigJSON` wraps a parsed `config.json` with typed accessors whose
// errors name the key and the file.

/// A parsed JSON value.
public indirect enum HFJSON: Sendable, Equatable {
    case null
    case bool(Bool)
    /// A number written without fraction or exponent that fits in `Int`.
    case int(Int)
    /// Any other number.
    case double(Double)
    case string(String)
    case array([HFJSON])
    case object(HFJSONObject)

    /// "null", "bool", "integer", "number", "string", "array" or "object".
    public var typeName: String {
        switch self {
        case .null: return "null"
        case .bool: return "bool"
        case .int: return "integer"
        case .double: return "number"
        case .string: return "string"
        case .array: return "array"
        case .object: return "object"
        }
    }

    /// A short rendering of the value for error messages.
    public var brief: String {
        switch self {
        case .null: return "null"
        case let .bool(b): return b ? "true" : "false"
        case let .int(i): return String(i)
        case let .double(d): return String(d)
        case let .string(s): return "\"" + (s.count > 40 ? String(s.prefix(40)) + "…" : s) + "\""
        case let .array(a): return "an array of \(a.count)"
        case let .object(o): return "an object of \(o.count) keys"
        }
    }

    public var intValue: Int? { if case let .int(i) = self { return i }; return nil }
    /// Integers and other numbers as Double.
    public var doubleValue: Double? {
        switch self {
        case let .int(i): return Double(i)
        case let .double(d): return d
        default: return nil
        }
    }
    public var stringValue: String? { if case let .string(s) = self { return s }; return nil }
    public var boolValue: Bool? { if case let .bool(b) = self { return b }; return nil }
    public var arrayValue: [HFJSON]? { if case let .array(a) = self { return a }; return nil }
    public var objectValue: HFJSONObject? { if case let .object(o) = self { return o }; return nil }
    public var isNull: Bool { if case .null = self { return true }; return false }

    public subscript(key: String) -> HFJSON? { objectValue?[key] }

    /// A syntax error at a byte offset.
    public struct SyntaxError: Error, CustomStringConvertible, Sendable {
        public let offset: Int
        public let message: String
        public var description: String { "invalid JSON at byte \(offset): \(message)" }
    }

    /// Parses one JSON value (surrounding whitespace allowed, nothing else). With `rejectDuplicateKeys`, an object
    /// may not repeat a key; keys are compared as Swift strings (canonically equivalent spellings count as the same).
    public static func parse(_ bytes: UnsafeRawBufferPointer, rejectDuplicateKeys: Bool = false) throws -> HFJSON {
        var p = JSONParser(bytes: bytes.bindMemory(to: UInt8.self), rejectDuplicates: rejectDuplicateKeys)
        p.skipSpace()
        let v = try p.value(depth: 0)
        p.skipSpace()
        guard p.pos == p.bytes.count else { throw p.error("unexpected data after the JSON value") }
        return v
    }

    public static func parse(_ data: Data, rejectDuplicateKeys: Bool = false) throws -> HFJSON {
        try data.withUnsafeBytes { try parse($0, rejectDuplicateKeys: rejectDuplicateKeys) }
    }

    /// Reads and parses a file; errors name the file (and the byte offset of a syntax error).
    public static func parse(contentsOf path: String) throws -> HFJSON {
        let data: Data
        do { data = try Data(contentsOf: URL(fileURLWithPath: path)) } catch {
            throw CausalError.io(path: path, reason: FileManager.default.fileExists(atPath: path) ? "cannot read" : "no such file")
        }
        do { return try parse(data) } catch let e as SyntaxError {
            throw CausalError.badFormat(path: path, field: "JSON", reason: e.description)
        }
    }
}

/// A JSON object: its members in file order, and lookup by key (the last of repeated keys wins).
///
/// Members are kept as a list because Swift compares strings by canonical equivalence: a vocabulary may hold both
/// "é" and "e\u{301}" as different tokens, which a `[String: _]` would merge.
public struct HFJSONObject: Sendable, Equatable {
    public private(set) var keys: [String] = []
    public private(set) var values: [HFJSON] = []
    private var index: [String: Int] = [:]

    public init() {}

    public init(_ pairs: [(String, HFJSON)]) {
        for (k, v) in pairs { append(k, v) }
    }

    /// Adds a member; returns true when the key was already present.
    @discardableResult
    public mutating func append(_ key: String, _ value: HFJSON) -> Bool {
        keys.append(key)
        values.append(value)
        return index.updateValue(keys.count - 1, forKey: key) != nil
    }

    public subscript(key: String) -> HFJSON? { index[key].map { values[$0] } }
    public var count: Int { keys.count }
    public var isEmpty: Bool { keys.isEmpty }
    /// Members in file order.
    public var members: Zip2Sequence<[String], [HFJSON]> { zip(keys, values) }

    public static func == (a: HFJSONObject, b: HFJSONObject) -> Bool { a.keys == b.keys && a.values == b.values }
}

/// Recursive-descent JSON parser over UTF-8 bytes.
private struct JSONParser {
    let bytes: UnsafeBufferPointer<UInt8>
    let rejectDuplicates: Bool
    var pos = 0
    static let maxDepth = 512

    init(bytes: UnsafeBufferPointer<UInt8>, rejectDuplicates: Bool) {
        self.bytes = bytes
        self.rejectDuplicates = rejectDuplicates
    }

    func error(_ message: String) -> HFJSON.SyntaxError { HFJSON.SyntaxError(offset: pos, message: message) }

    mutating func skipSpace() {
        while pos < bytes.count {
            switch bytes[pos] {
            case 0x20, 0x09, 0x0A, 0x0D: pos += 1
            default: return
            }
        }
    }

    mutating func value(depth: Int) throws -> HFJSON {
        guard depth < Self.maxDepth else { throw error("nested deeper than \(Self.maxDepth) levels") }
        guard pos < bytes.count else { throw error("unexpected end of input") }
        switch bytes[pos] {
        case UInt8(ascii: "{"): return try object(depth: depth)
        case UInt8(ascii: "["): return try array(depth: depth)
        case UInt8(ascii: "\""): return .string(try string())
        case UInt8(ascii: "t"): try literal("true"); return .bool(true)
        case UInt8(ascii: "f"): try literal("false"); return .bool(false)
        case UInt8(ascii: "n"): try literal("null"); return .null
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return try number()
        default: throw error("unexpected character '\(Unicode.Scalar(bytes[pos]))'")
        }
    }

    mutating func literal(_ word: StaticString) throws {
        let n = word.utf8CodeUnitCount
        guard bytes.count - pos >= n, memcmp(bytes.baseAddress! + pos, word.utf8Start, n) == 0 else {
            throw error("invalid literal (expected \(word))")
        }
        pos += n
    }

    mutating func object(depth: Int) throws -> HFJSON {
        pos += 1
        var out = HFJSONObject()
        skipSpace()
        if pos < bytes.count && bytes[pos] == UInt8(ascii: "}") { pos += 1; return .object(out) }
        while true {
            skipSpace()
            guard pos < bytes.count, bytes[pos] == UInt8(ascii: "\"") else { throw error("expected a string key") }
            let keyStart = pos
            let key = try string()
            skipSpace()
            guard pos < bytes.count, bytes[pos] == UInt8(ascii: ":") else { throw error("expected ':' after key \"\(key)\"") }
            pos += 1
            skipSpace()
            let v = try value(depth: depth + 1)
            if out.append(key, v) && rejectDuplicates {
                throw HFJSON.SyntaxError(offset: keyStart, message: "duplicate key \"\(key)\"")
            }
            skipSpace()
            guard pos < bytes.count else { throw error("unexpected end of input inside an object") }
            if bytes[pos] == UInt8(ascii: ",") { pos += 1; continue }
            if bytes[pos] == UInt8(ascii: "}") { pos += 1; return .object(out) }
            throw error("expected ',' or '}' in an object")
        }
    }

    mutating func array(depth: Int) throws -> HFJSON {
        pos += 1
        var out: [HFJSON] = []
        skipSpace()
        if pos < bytes.count && bytes[pos] == UInt8(ascii: "]") { pos += 1; return .array(out) }
        while true {
            skipSpace()
            out.append(try value(depth: depth + 1))
            skipSpace()
            guard pos < bytes.count else { throw error("unexpected end of input inside an array") }
            if bytes[pos] == UInt8(ascii: ",") { pos += 1; continue }
            if bytes[pos] == UInt8(ascii: "]") { pos += 1; return .array(out) }
            throw error("expected ',' or ']' in an array")
        }
    }

    mutating func hex4() throws -> UInt32 {
        guard bytes.count - pos >= 4 else { throw error("truncated \\u escape") }
        var v: UInt32 = 0
        for _ in 0..<4 {
            let c = bytes[pos]
            let d: UInt32
            switch c {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): d = UInt32(c - UInt8(ascii: "0"))
            case UInt8(ascii: "a")...UInt8(ascii: "f"): d = UInt32(c - UInt8(ascii: "a") + 10)
            case UInt8(ascii: "A")...UInt8(ascii: "F"): d = UInt32(c - UInt8(ascii: "A") + 10)
            default: throw error("invalid hex digit in \\u escape")
            }
            v = v << 4 | d
            pos += 1
        }
        return v
    }

    mutating func string() throws -> String {
        pos += 1  // opening quote
        let start = pos
        // Fast path: no escapes.
        while pos < bytes.count {
            let c = bytes[pos]
            if c == UInt8(ascii: "\"") {
                let s = try utf8(start, pos)
                pos += 1
                return s
            }
            if c == UInt8(ascii: "\\") { break }
            if c < 0x20 { throw error("control character in a string") }
            pos += 1
        }
        var out = Array(bytes[start..<pos])
        while pos < bytes.count {
            let c = bytes[pos]
            if c == UInt8(ascii: "\"") {
                pos += 1
                return try out.withUnsafeBufferPointer { try validUTF8($0, offset: start) }
            }
            if c < 0x20 { throw error("control character in a string") }
            if c != UInt8(ascii: "\\") { out.append(c); pos += 1; continue }
            pos += 1
            guard pos < bytes.count else { break }
            let e = bytes[pos]
            pos += 1
            switch e {
            case UInt8(ascii: "\""): out.append(0x22)
            case UInt8(ascii: "\\"): out.append(0x5C)
            case UInt8(ascii: "/"): out.append(0x2F)
            case UInt8(ascii: "b"): out.append(0x08)
            case UInt8(ascii: "f"): out.append(0x0C)
            case UInt8(ascii: "n"): out.append(0x0A)
            case UInt8(ascii: "r"): out.append(0x0D)
            case UInt8(ascii: "t"): out.append(0x09)
            case UInt8(ascii: "u"):
                var v = try hex4()
                if (0xD800...0xDBFF).contains(v) {
                    // A high surrogate must be followed by an escaped low surrogate.
                    guard bytes.count - pos >= 6, bytes[pos] == UInt8(ascii: "\\"), bytes[pos + 1] == UInt8(ascii: "u") else {
                        throw error("unpaired surrogate in \\u escape")
                    }
                    pos += 2
                    let lo = try hex4()
                    guard (0xDC00...0xDFFF).contains(lo) else { throw error("unpaired surrogate in \\u escape") }
                    v = 0x10000 + ((v - 0xD800) << 10) + (lo - 0xDC00)
                } else if (0xDC00...0xDFFF).contains(v) {
                    throw error("unpaired surrogate in \\u escape")
                }
                out.append(contentsOf: Array(String(Unicode.Scalar(v)!).utf8))
            default: throw error("invalid escape '\\\(Unicode.Scalar(e))'")
            }
        }
        throw HFJSON.SyntaxError(offset: start - 1, message: "unterminated string")
    }

    func utf8(_ lo: Int, _ hi: Int) throws -> String {
        try validUTF8(UnsafeBufferPointer(rebasing: bytes[lo..<hi]), offset: lo)
    }

    func validUTF8(_ span: UnsafeBufferPointer<UInt8>, offset: Int) throws -> String {
        var ascii = true
        for b in span where b >= 0x80 { ascii = false; break }
        if !ascii {
            var it = span.makeIterator()
            var decoder = UTF8()
            loop: while true {
                switch decoder.decode(&it) {
                case .scalarValue: continue
                case .emptyInput: break loop
                case .error: throw HFJSON.SyntaxError(offset: offset, message: "string is not valid UTF-8")
                }
            }
        }
        return String(decoding: span, as: UTF8.self)
    }

    mutating func number() throws -> HFJSON {
        let start = pos
        func digits() -> Int {
            let s = pos
            while pos < bytes.count, bytes[pos] >= UInt8(ascii: "0"), bytes[pos] <= UInt8(ascii: "9") { pos += 1 }
            return pos - s
        }
        if bytes[pos] == UInt8(ascii: "-") { pos += 1 }
        let intStart = pos
        let n = digits()
        guard n > 0 else { throw error("invalid number") }
        guard !(n > 1 && bytes[intStart] == UInt8(ascii: "0")) else {
            throw HFJSON.SyntaxError(offset: intStart, message: "invalid number (leading zero)")
        }
        var integral = true
        if pos < bytes.count && bytes[pos] == UInt8(ascii: ".") {
            pos += 1
            integral = false
            guard digits() > 0 else { throw error("invalid number (no digits after '.')") }
        }
        if pos < bytes.count && (bytes[pos] == UInt8(ascii: "e") || bytes[pos] == UInt8(ascii: "E")) {
            pos += 1
            integral = false
            if pos < bytes.count && (bytes[pos] == UInt8(ascii: "+") || bytes[pos] == UInt8(ascii: "-")) { pos += 1 }
            guard digits() > 0 else { throw error("invalid number (no digits in the exponent)") }
        }
        let text = String(decoding: UnsafeBufferPointer(rebasing: bytes[start..<pos]), as: UTF8.self)
        if integral, let i = Int(text) { return .int(i) }
        guard let d = Double(text), d.isFinite else {
            throw HFJSON.SyntaxError(offset: start, message: "number \(text) is out of range")
        }
        return .double(d)
    }
}

// MARK: - config.json

/// A parsed `config.json`: typed accessors whose errors name the key and the file.
///
/// Missing keys and JSON `null` are treated alike ("not set"): the `default:` variants return the default for both,
/// the others throw `CausalError.badConfig(key:reason:)` saying the key is missing from the file. A value of the wrong
/// type always throws, naming the expected and the found type.
public struct ConfigJSON: Sendable {
    public let path: String
    public let values: HFJSONObject

    /// Reads `path` (a `config.json`).
    public init(path: String) throws {
        let root = try HFJSON.parse(contentsOf: path)
        guard case let .object(o) = root else {
            throw CausalError.badFormat(path: path, field: "JSON", reason: "the top level must be an object, found \(root.typeName)")
        }
        self.path = path
        values = o
    }

    public init(path: String, values: HFJSONObject) {
        self.path = path
        self.values = values
    }

    /// True when the key is present and not null.
    public func has(_ key: String) -> Bool {
        guard let v = values[key] else { return false }
        return !v.isNull
    }

    public func int(_ key: String) throws -> Int {
        let v = try required(key)
        if let i = v.intValue { return i }
        // 384.0 is accepted as 384; 0.5 is not.
        if case let .double(d) = v, d.rounded() == d, abs(d) < 9.0e15 { return Int(d) }
        throw wrongType(key, "an integer", v)
    }

    public func int(_ key: String, default d: Int) throws -> Int { has(key) ? try int(key) : d }

    public func double(_ key: String) throws -> Double {
        let v = try required(key)
        guard let d = v.doubleValue else { throw wrongType(key, "a number", v) }
        return d
    }

    public func double(_ key: String, default d: Double) throws -> Double { has(key) ? try double(key) : d }

    public func string(_ key: String) throws -> String {
        let v = try required(key)
        guard let s = v.stringValue else { throw wrongType(key, "a string", v) }
        return s
    }

    public func string(_ key: String, default d: String) throws -> String { has(key) ? try string(key) : d }

    public func bool(_ key: String) throws -> Bool {
        let v = try required(key)
        guard let b = v.boolValue else { throw wrongType(key, "a bool", v) }
        return b
    }

    public func bool(_ key: String, default d: Bool) throws -> Bool { has(key) ? try bool(key) : d }

    /// An error about `key` in this file, for checks made by the caller (e.g. a value out of range).
    public func invalid(_ key: String, _ reason: String) -> CausalError {
        .badConfig(key: key, reason: "\(reason) (in \(path))")
    }

    private func required(_ key: String) throws -> HFJSON {
        guard let v = values[key], !v.isNull else {
            throw CausalError.badConfig(key: key, reason: "required key is missing from \(path)")
        }
        return v
    }

    private func wrongType(_ key: String, _ want: String, _ v: HFJSON) -> CausalError {
        .badConfig(key: key, reason: "expected \(want), found \(v.typeName) \(v.brief) (in \(path))")
    }
}
