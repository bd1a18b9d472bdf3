import Foundation
import XCTest
import CausalLM

/// JSON Schema to grammar: every supported keyword (texts it must accept and reject), the errors, and bounded
/// compilation for hostile schemas.
final class ConstrainedSchemaTests: XCTestCase {
    var tokenizer: any TextTokenizer { ConstrainedModel.tokenizer }

    func schema(_ s: String) throws -> GrammarConstraint { try GrammarConstraint.jsonSchema(s, tokenizer: tokenizer) }

    func check(_ s: String, accepts: [String], rejects: [String], file: StaticString = #filePath, line: UInt = #line) throws {
        let g = try schema(s)
        for a in accepts { XCTAssertTrue(g.matches(a), "\(s) should accept \(a)", file: file, line: line) }
        for r in rejects { XCTAssertFalse(g.matches(r), "\(s) should reject \(r)", file: file, line: line) }
    }

    func error(_ s: String) -> String {
        do { _ = try schema(s); return "no error" } catch let e as CausalError {
            guard case .invalidArgument = e else { return "wrong case: \(e)" }
            return e.description
        } catch { return "unexpected \(error)" }
    }

    func testKeywords() throws {
        // Primitive types, whitespace bounds.
        try check(#"{"type": "string"}"#, accepts: [#""""#, #""a b""#, #""é\"\\\n\u00e9""#],
                  rejects: ["a", #""a"#, "\"a\nb\"", #""\x""#, #" "a""#])
        try check(#"{"type": "integer"}"#, accepts: ["0", "-12", "1234567890123456"],
                  rejects: ["01", "1.5", "+1", "-", "12345678901234567"])
        try check(#"{"type": "number"}"#, accepts: ["0", "-1.25", "3e10", "2.5E-3"], rejects: ["1.", ".5", "1e", "NaN"])
        try check(#"{"type": "boolean"}"#, accepts: ["true", "false"], rejects: ["True", "1"])
        try check(#"{"type": "null"}"#, accepts: ["null"], rejects: ["nil", ""])
        try check(#"{"type": ["string", "null"]}"#, accepts: [#""x""#, "null"], rejects: ["1"])
        // Objects: schema order, required and optional properties, bounded whitespace.
        let person = #"{"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}, "tags": {"type": "array", "items": {"type": "string"}}}, "required": ["name"], "additionalProperties": false}"#
        try check(person,
                  accepts: [#"{"name":"A"}"#, #"{"name": "A", "age": 3}"#, #"{"name":"A","tags":["x","y"]}"#,
                            #"{"name":"A","age":3,"tags":[]}"#, "{\n  \"name\": \"A\",\n  \"age\": 3\n}"],
                  rejects: [#"{}"#, #"{"age":3}"#, #"{"age":3,"name":"A"}"#, #"{"name":"A","x":1}"#, #"{"name":"A",}"#,
                            "{\n\n\"name\":\"A\"}", "{" + String(repeating: " ", count: 30) + "\"name\":\"A\"}"])
        try check(#"{"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}}"#,
                  accepts: ["{}", #"{"a":1}"#, #"{"b":2}"#, #"{"a":1,"b":2}"#], rejects: [#"{"b":2,"a":1}"#, #"{,"b":2}"#])
        try check(#"{"type": "object"}"#, accepts: ["{}", #"{"x": [1, {"y": null}]}"#], rejects: ["[]"])
        try check(#"{"type": "object", "additionalProperties": {"type": "integer"}}"#, accepts: [#"{"p": 1, "q": 2}"#], rejects: [#"{"p": "1"}"#])
        // Arrays with bounds.
        try check(#"{"type": "array", "items": {"type": "integer"}, "minItems": 1, "maxItems": 3}"#,
                  accepts: ["[1]", "[1, 2, 3]"], rejects: ["[]", "[1,2,3,4]", "[1,]"])
        try check(#"{"type": "array", "items": {"type": "boolean"}, "minItems": 2}"#,
                  accepts: ["[true,false]", "[true,false,true,true]"], rejects: ["[true]"])
        // Strings: enum, const, pattern, lengths (format is ignored).
        try check(#"{"type": "string", "enum": ["red", "green", "a\"b"]}"#, accepts: [#""red""#, #""a\"b""#], rejects: [#""blue""#, #""re""#])
        try check(#"{"const": "fixed"}"#, accepts: [#""fixed""#], rejects: [#""fixe""#])
        try check(#"{"enum": [1, "one", null, [1, 2], {"k": true}]}"#,
                  accepts: ["1", #""one""#, "null", "[1,2]", #"{"k":true}"#], rejects: ["2", "[1, 2]"])
        try check(#"{"type": "string", "pattern": "^[A-Z]{2}-\\d{3}$"}"#, accepts: [#""AB-123""#], rejects: [#""AB-12""#, #""ab-123""#, #"" AB-123""#])
        try check(#"{"type": "string", "pattern": "(cat|dog)s?"}"#, accepts: [#""cats""#, #""a dog!""#], rejects: [#""cow""#])
        try check(#"{"type": "string", "pattern": "^a.c$"}"#, accepts: [#""abc""#, #""a\"c""#, #""a\\c""#], rejects: [#""a"c""#, #""ac""#])
        try check(#"{"type": "string", "minLength": 2, "maxLength": 3, "format": "email"}"#,
                  accepts: [#""ab""#, #""a\nc""#], rejects: [#""a""#, #""abcd""#])
        // anyOf, $defs and $ref, recursion.
        try check(#"{"anyOf": [{"type": "integer"}, {"type": "object", "properties": {"x": {"type": "string"}}, "required": ["x"]}]}"#,
                  accepts: ["5", #"{"x":"y"}"#], rejects: [#""5""#, "{}"])
        let tree = ##"{"$defs": {"node": {"type": "object", "properties": {"v": {"type": "integer"}, "kids": {"type": "array", "items": {"$ref": "#/$defs/node"}}}, "required": ["v", "kids"]}}, "$ref": "#/$defs/node"}"##
        try check(tree, accepts: [#"{"v":1,"kids":[]}"#, #"{"v":1,"kids":[{"v":2,"kids":[{"v":3,"kids":[]}]}]}"#],
                  rejects: [#"{"v":1}"#, #"{"v":1,"kids":[{"v":2}]}"#])
        try check(##"{"definitions": {"n": {"type": "integer"}}, "type": "array", "items": {"$ref": "#/definitions/n"}}"##,
                  accepts: ["[1,2]"], rejects: [#"["1"]"#])
        try check(##"{"type": "object", "properties": {"next": {"anyOf": [{"$ref": "#"}, {"type": "null"}]}}, "required": ["next"]}"##,
                  accepts: [#"{"next":null}"#, #"{"next":{"next":null}}"#], rejects: ["{}"])
        // Any JSON object (json_object mode).
        let obj = try GrammarConstraint.jsonObject(tokenizer: tokenizer)
        for ok in ["{}", #"{"a": [1, 2.5, {"b": null}], "c": "d"}"#, "{\n  \"k\": true\n}"] { XCTAssertTrue(obj.matches(ok), ok) }
        for bad in ["[]", "1", #"{"a"}"#, #"{"a":}"#] { XCTAssertFalse(obj.matches(bad), bad) }
    }

    func testErrorsNameThePath() {
        XCTAssertTrue(error(#"{"anyOf": []}"#).contains("JSON schema at #/anyOf: an empty anyOf accepts nothing"), error(#"{"anyOf": []}"#))
        let missing = #"{"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a", "b"]}"#
        XCTAssertTrue(error(missing).contains("#/required: 'b' is required but not in 'properties'"), error(missing))
        XCTAssertTrue(error(#"{"properties": {"a": false}}"#).contains("#/properties/a"), error(#"{"properties": {"a": false}}"#))
        XCTAssertTrue(error(#"{"not": {"type": "string"}}"#).contains("#: the keyword 'not' is not supported"))
        XCTAssertTrue(error(#"{"type": "strin"}"#).contains("#/type: unknown type 'strin'"))
        XCTAssertTrue(error(##"{"$ref": "#/$defs/none"}"##).contains("does not resolve"))
        XCTAssertTrue(error(##"{"$ref": "other.json#/x"}"##).contains("only local references"))
        XCTAssertTrue(error(#"{"type": "array", "items": {"type": "string", "pattern": "(?=a)"}}"#).contains("#/items/pattern"))
        XCTAssertTrue(error(#"{"type": "array", "minItems": 3, "maxItems": 2}"#).contains("maxItems 2 is below minItems 3"))
        XCTAssertTrue(error(#"{"type": "string", "enum": [1, 2]}"#).contains("#/enum: no value has the schema's type"))
        XCTAssertTrue(error("{\"type\": ").contains("JSON schema: invalid JSON"))
        // A recursive reference with no way out has no finite instance.
        let endless = ##"{"type": "object", "properties": {"a": {"$ref": "#"}}, "required": ["a"]}"##
        XCTAssertTrue(error(endless).contains("no finite sentence"), error(endless))
        // A reference cycle that consumes nothing: no finite instance; with a way out, left recursion.
        let cycle = ##"{"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}"##
        XCTAssertTrue(error(cycle).contains("no finite sentence"), error(cycle))
        let leftRec = ##"{"$defs": {"a": {"anyOf": [{"$ref": "#/$defs/a"}, {"type": "null"}]}}, "$ref": "#/$defs/a"}"##
        XCTAssertTrue(error(leftRec).contains("left recursion"), error(leftRec))
    }

    /// Hostile schemas give an error or compile, in bounded time.
    func testFuzzBoundedTime() throws {
        func timed(_ s: String) -> (String, Double) {
            let t0 = Date()
            let e = error(s)
            return (e, Date().timeIntervalSince(t0))
        }
        // Deep nesting: beyond the limit is an error naming the depth.
        var deep = #"{"type": "string"}"#
        for _ in 0..<200 { deep = #"{"type": "array", "items": "# + deep + "}" }
        let (d, dt) = timed(deep)
        XCTAssertTrue(d.contains("nested deeper than 64"), d)
        XCTAssertLessThan(dt, 5)
        var ok = #"{"type": "integer"}"#
        for _ in 0..<30 { ok = #"{"type": "object", "properties": {"a": "# + ok + "}, \"required\": [\"a\"]}" }
        XCTAssertEqual(error(ok), "no error")
        // Huge enums: over the limit is an error; at the limit it compiles quickly.
        let huge = "{\"enum\": [" + (0..<100_000).map { "\"v\($0)\"" }.joined(separator: ",") + "]}"
        let (h, ht) = timed(huge)
        XCTAssertTrue(h.contains("#/enum: 100000 values exceed the limit of 4096"), h)
        XCTAssertLessThan(ht, 10)
        let big = "{\"enum\": [" + (0..<4096).map { "\"value number \($0)\"" }.joined(separator: ",") + "]}"
        let (b, bt) = timed(big)
        XCTAssertEqual(b, "no error")
        XCTAssertLessThan(bt, 20)
        // Many mutually recursive references.
        var defs: [String] = []
        for i in 0..<200 { defs.append("\"d\(i)\": {\"anyOf\": [{\"type\": \"null\"}, {\"type\": \"array\", \"items\": {\"$ref\": \"#/$defs/d\((i * 7 + 3) % 200)\"}}]}") }
        let rec = "{\"$defs\": {" + defs.joined(separator: ",") + "}, \"$ref\": \"#/$defs/d0\"}"
        let (r, rt) = timed(rec)
        XCTAssertEqual(r, "no error")
        XCTAssertLessThan(rt, 10)
        // Random mutations of a valid schema: an invalidArgument or a grammar, never a crash or a hang.
        let base = Array(##"{"type":"object","properties":{"a":{"type":"array","items":{"$ref":"#/$defs/x"},"maxItems":3},"b":{"enum":[1,"x",null]}},"required":["a"],"$defs":{"x":{"anyOf":[{"type":"string","pattern":"^[a-c]+$"},{"type":"integer"}]}}}"##.utf8)
        var rng = SequenceRNG(seed: 11)
        let alphabet = Array(#"{}[]":,"#.utf8) + Array("ab0$#/".utf8)
        for _ in 0..<300 {
            var m = base
            for _ in 0..<(1 + Int(rng.next() % 3)) {
                let at = Int(rng.next() % UInt64(m.count))
                switch rng.next() % 3 {
                case 0: m.remove(at: at)
                case 1: m.insert(alphabet[Int(rng.next() % UInt64(alphabet.count))], at: at)
                default: m[at] = alphabet[Int(rng.next() % UInt64(alphabet.count))]
                }
            }
            let t0 = Date()
            do { _ = try GrammarConstraint.jsonSchema(Data(m), tokenizer: tokenizer) } catch let e as CausalError {
                guard case .invalidArgument = e else { XCTFail("wrong error \(e)"); continue }
            }
            XCTAssertLessThan(Date().timeIntervalSince(t0), 2, String(decoding: m, as: UTF8.self))
        }
    }
}
