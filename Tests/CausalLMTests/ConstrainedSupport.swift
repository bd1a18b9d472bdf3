import Foundation
import XCTest
import CausalLM

/// A small JSON Schema validator for the constrained-decoding tests, written independently of the schema compiler:
/// it checks a parsed value (JSONSerialization's output) against the schema keywords the tests use.
enum SchemaValidator {
    /// nil when `value` is valid, else the first problem with its path.
    static func validate(_ value: Any, _ schema: Any, root: Any? = nil, path: String = "$") -> String? {
        let root = root ?? schema
        if let b = schema as? Bool { return b ? nil : "\(path): schema false" }
        guard let s = schema as? [String: Any] else { return "\(path): bad schema" }
        if let ref = s["$ref"] as? String {
            var target: Any = root
            if ref != "#" {
                for part in ref.dropFirst(2).split(separator: "/") {
                    guard let t = (target as? [String: Any])?[String(part)] else { return "\(path): unresolved \(ref)" }
                    target = t
                }
            }
            return validate(value, target, root: root, path: path)
        }
        if let any = (s["anyOf"] ?? s["oneOf"]) as? [Any] {
            if any.contains(where: { validate(value, $0, root: root, path: path) == nil }) { return nil }
            return "\(path): matches no anyOf alternative"
        }
        if let c = s["const"], !equal(value, c) { return "\(path): \(value) is not the const \(c)" }
        if let e = s["enum"] as? [Any], !e.contains(where: { equal(value, $0) }) { return "\(path): \(value) not in enum" }
        if let t = s["type"] {
            let types = (t as? [String]) ?? [t as! String]
            guard types.contains(where: { hasType(value, $0) }) else { return "\(path): \(value) is not of type \(types)" }
        }
        if let o = value as? [String: Any], let props = s["properties"] as? [String: Any] {
            for r in (s["required"] as? [String]) ?? [] where o[r] == nil { return "\(path): missing required '\(r)'" }
            for (k, v) in o {
                guard let ps = props[k] else { return "\(path): unexpected property '\(k)'" }
                if let err = validate(v, ps, root: root, path: path + "." + k) { return err }
            }
        }
        if let a = value as? [Any], !(value is String) {
            if let mn = s["minItems"] as? Int, a.count < mn { return "\(path): \(a.count) items < minItems \(mn)" }
            if let mx = s["maxItems"] as? Int, a.count > mx { return "\(path): \(a.count) items > maxItems \(mx)" }
            if let items = s["items"] {
                for (i, x) in a.enumerated() { if let err = validate(x, items, root: root, path: "\(path)[\(i)]") { return err } }
            }
        }
        if let str = value as? String {
            if let mn = s["minLength"] as? Int, str.count < mn { return "\(path): shorter than \(mn)" }
            if let mx = s["maxLength"] as? Int, str.count > mx { return "\(path): longer than \(mx)" }
            if let p = s["pattern"] as? String {
                let rx = try! NSRegularExpression(pattern: p)
                if rx.firstMatch(in: str, range: NSRange(str.startIndex..., in: str)) == nil { return "\(path): '\(str)' does not match \(p)" }
            }
        }
        return nil
    }

    /// JSON true/false as JSONSerialization returns them (Bool on Linux, a boolean NSNumber on macOS).
    static func isBool(_ v: Any) -> Bool { v is Bool && String(describing: type(of: v)).contains("Bool") }

    static func hasType(_ v: Any, _ t: String) -> Bool {
        switch t {
        case "null": return v is NSNull
        case "boolean": return isBool(v)
        case "integer":
            guard let n = v as? NSNumber, !isBool(v) else { return false }
            return n.doubleValue == n.doubleValue.rounded()
        case "number": return v is NSNumber && !isBool(v)
        case "string": return v is String
        case "array": return v is [Any]
        case "object": return v is [String: Any]
        default: return false
        }
    }

    static func equal(_ a: Any, _ b: Any) -> Bool {
        (a as? NSObject)?.isEqual(b as? NSObject) ?? false
    }
}

/// The default model's bundle, loaded once for every constrained test.
enum ConstrainedModel {
    static let bundle: ModelBundle = { try! ModelBundle(path: TestModel.path) }()
    static let tokenizer: any TextTokenizer = { try! bundle.tokenizer }()
}
