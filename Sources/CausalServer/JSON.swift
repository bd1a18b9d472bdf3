import Foundation
import CausalLM

/// A JSON value with ordered object keys, for writing responses exactly as the OpenAI API spells them
/// (including `null` fields).
public enum JSONValue: Equatable, Sendable {
    case null
    case bool(Bool)
    case int(Int)
    case double(Double)
    case string(String)
    case array([JSONValue])
    case object([(String, JSONValue)])
    /// An array of 32-bit floats, each written in its shortest form that reads back as the same float
    /// (non-finite values as null).
    case floats([Float])

    public static func == (a: JSONValue, b: JSONValue) -> Bool { a.serialized() == b.serialized() }

    /// Compact JSON text.
    public func serialized() -> String {
        var out = ""
        write(into: &out)
        return out
    }

    func write(into out: inout String) {
        switch self {
        case .null: out += "null"
        case .bool(let b): out += b ? "true" : "false"
        case .int(let i): out += String(i)
        case .double(let d):
            if d.isFinite { out += d == d.rounded() && abs(d) < 1e15 ? String(Int(d)) : "\(d)" } else { out += "null" }
        case .string(let s): JSONValue.writeString(s, into: &out)
        case .array(let a):
            out += "["
            for (i, v) in a.enumerated() {
                if i > 0 { out += "," }
                v.write(into: &out)
            }
            out += "]"
        case .floats(let a):
            out += "["
            for (i, f) in a.enumerated() {
                if i > 0 { out += "," }
                out += f.isFinite ? f.description : "null"
            }
            out += "]"
        case .object(let o):
            out += "{"
            for (i, (k, v)) in o.enumerated() {
                if i > 0 { out += "," }
                JSONValue.writeString(k, into: &out)
                out += ":"
                v.write(into: &out)
            }
            out += "}"
        }
    }

    static func writeString(_ s: String, into out: inout String) {
        out += JSONText.quoted(s)
    }

    public static func float(_ f: Float) -> JSONValue { .double(Double(f)) }
    public static func optional(_ s: String?) -> JSONValue { s.map { .string($0) } ?? .null }
}

extension JSONValue {
    /// Converts what `JSONSerialization` returns.
    init(any v: Any) {
        if v is NSNull { self = .null; return }
        if isJSONBool(v), let b = v as? Bool { self = .bool(b); return }
        if let s = v as? String { self = .string(s); return }
        if let n = v as? NSNumber {
            let d = n.doubleValue
            self = d == d.rounded() && abs(d) < 9e15 ? .int(n.intValue) : .double(d)
            return
        }
        if let a = v as? [Any] { self = .array(a.map { JSONValue(any: $0) }); return }
        if let o = v as? [String: Any] { self = .object(o.keys.sorted().map { ($0, JSONValue(any: o[$0]!)) }); return }
        self = .null
    }

    subscript(key: String) -> JSONValue? {
        if case .object(let o) = self { return o.first(where: { $0.0 == key })?.1 }
        return nil
    }
}

/// True for JSON true/false as `JSONSerialization` returns them (Bool on Linux, a boolean NSNumber on macOS).
func isJSONBool(_ v: Any) -> Bool { v is Bool && String(describing: type(of: v)).contains("Bool") }
