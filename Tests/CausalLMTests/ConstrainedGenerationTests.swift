import Foundation
import XCTest
import CausalLM

/// Constrained generation with SmolLM2: outputs parse and validate against their schema (checked by a validator
/// independent of the compiler), greedy and seeded sampling, in one batch and alone.
final class ConstrainedGenerationTests: XCTestCase {
    static let schemas: [(prompt: String, schema: String)] = [
        ("a person named Ann who is 31 and not a student",
         #"{"type": "object", "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer"}, "student": {"type": "boolean"}}, "required": ["name", "age"], "additionalProperties": false}"#),
        ("a list of two items with ids and flags",
         #"{"type": "array", "items": {"type": "object", "properties": {"id": {"type": "integer"}, "ok": {"type": "boolean"}}, "required": ["id", "ok"]}, "minItems": 1, "maxItems": 3}"#),
        ("the colour of the sky",
         #"{"type": "object", "properties": {"color": {"enum": ["red", "green", "blue"]}}, "required": ["color"]}"#),
        ("anything short",
         #"{"type": "object", "properties": {"a": {"type": "string", "maxLength": 8}, "b": {"type": "integer"}, "c": {"type": "null"}}}"#),
        ("a value",
         #"{"type": "object", "properties": {"value": {"anyOf": [{"type": "integer"}, {"type": "string", "maxLength": 6}, {"type": "null"}]}}, "required": ["value"]}"#),
        // $ref through $defs (recursive refs are compiled and matched in ConstrainedSchemaTests; SmolLM2 greedy
        // nests a recursive tree until the budget ends, so this one is two levels).
        ("a small tree",
         ##"{"$defs": {"leaf": {"type": "object", "properties": {"v": {"type": "integer"}}, "required": ["v"]}, "node": {"type": "object", "properties": {"v": {"type": "integer"}, "kids": {"type": "array", "items": {"$ref": "#/$defs/leaf"}, "maxItems": 2}}, "required": ["v", "kids"]}}, "$ref": "#/$defs/node"}"##),
        ("a user with an id and tags",
         #"{"type": "object", "properties": {"user": {"type": "object", "properties": {"id": {"type": "integer"}, "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}, "maxItems": 3}}, "required": ["id", "tags"]}}, "required": ["user"]}"#),
        ("a nickname or nothing",
         #"{"type": "object", "properties": {"nick": {"type": ["string", "null"], "maxLength": 10}}, "required": ["nick"]}"#),
        ("an airport code",
         #"{"type": "object", "properties": {"code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{2}$"}}, "required": ["code"]}"#),
        ("a point",
         #"{"type": "object", "properties": {"kind": {"const": "point"}, "x": {"type": "number"}, "y": {"type": "number"}}, "required": ["kind", "x", "y"]}"#),
        ("four answers",
         #"{"type": "array", "items": {"type": "boolean"}, "maxItems": 4}"#),
    ]

    var bundle: ModelBundle { ConstrainedModel.bundle }

    func prompt(_ text: String) throws -> [Int] {
        try bundle.chatPromptIDs([ChatMessage(role: "user", content: "Reply with JSON only: \(text).")])
    }

    /// The bytes of the output's tokens (end tokens left out) must be a prefix the grammar accepts.
    func assertTokensViable(_ r: GenerationResult, _ c: GrammarConstraint, _ what: String) {
        let tok = ConstrainedModel.tokenizer
        let bytes = r.tokens.filter { !bundle.endTokenIDs.contains($0) }.flatMap { tok.tokenBytes($0) }
        XCTAssertTrue(c.acceptsPrefix(bytes), "\(what): tokens leave the grammar: \(String(decoding: bytes, as: UTF8.self))")
    }

    func testSchemasGreedyAndSampledInOneBatch() throws {
        let tok = ConstrainedModel.tokenizer
        let constraints = try Self.schemas.map { try GrammarConstraint.jsonSchema($0.schema, tokenizer: tok) }
        var requests: [SequenceRequest] = []
        var what: [String] = []
        for (i, s) in Self.schemas.enumerated() {
            let ids = try prompt(s.prompt)
            requests.append(SequenceRequest(prompt: ids, parameters: GenerateParameters(maxNewTokens: 120, constraint: constraints[i])))
            what.append("schema \(i) greedy")
            requests.append(SequenceRequest(prompt: ids, parameters: GenerateParameters(maxNewTokens: 120, temperature: 1, seed: UInt64(7 + i), constraint: constraints[i])))
            what.append("schema \(i) seed \(7 + i)")
        }
        // An unconstrained sequence shares the batch.
        let free = SequenceRequest(prompt: try prompt("a haiku"), parameters: GenerateParameters(maxNewTokens: 12))
        requests.append(free)
        let g = bundle.makeGenerator()
        let t0 = Date()
        let results = try g.generate(requests)
        print("constrained batch of \(requests.count): \(String(format: "%.1f", Date().timeIntervalSince(t0))) s, \(g.lastStats.steps) steps")
        for (k, r) in results.dropLast().enumerated() {
            let i = k / 2
            let schema = try JSONSerialization.jsonObject(with: Data(Self.schemas[i].schema.utf8))
            XCTAssertEqual(r.finishReason, .stop, "\(what[k]): \(r.text)")
            assertTokensViable(r, constraints[i], what[k])
            guard let value = try? JSONSerialization.jsonObject(with: Data(r.text.utf8), options: .fragmentsAllowed) else {
                XCTFail("\(what[k]): not JSON: \(r.text)")
                continue
            }
            XCTAssertNil(SchemaValidator.validate(value, schema), "\(what[k]): \(r.text)")
            print("\(what[k]): \(r.text.replacingOccurrences(of: "\n", with: "\\n"))")
        }
        // Batch invariance: alone, each gives the same tokens as in the batch.
        for k in [0, 3, 10, 13] {
            let alone = try g.generate([requests[k]])[0]
            XCTAssertEqual(alone.tokens, results[k].tokens, what[k])
        }
        XCTAssertEqual(try g.generate([free])[0].tokens, results.last!.tokens)
    }

    func testLengthAndLogitBiasCannotBreakTheGrammar() throws {
        let tok = ConstrainedModel.tokenizer
        let c = try GrammarConstraint.jsonSchema(Self.schemas[0].schema, tokenizer: tok)
        let ids = try prompt(Self.schemas[0].prompt)
        let g = bundle.makeGenerator()
        // The budget ends first: reason length, the output a viable prefix.
        let short = try g.generate([SequenceRequest(prompt: ids, parameters: GenerateParameters(maxNewTokens: 3, constraint: c))])[0]
        XCTAssertEqual(short.finishReason, .length)
        XCTAssertEqual(short.tokens.count, 3)
        assertTokensViable(short, c, "short")
        // Push tokens the grammar never allows here (and the end token) with the largest bias.
        var bias: [Int: Float] = [:]
        for w in ["Hello", " Sure", "```", "Here", " the", "<|im_end|>"] { for id in try tok.encode(w) { bias[id] = 100 } }
        if let e = tok.eosTokenID { bias[e] = 100 }
        for e in bundle.endTokenIDs { bias[e] = 100 }
        var rng = SequenceRNG(seed: 5)
        for _ in 0..<200 { bias[Int(rng.next() % UInt64(tok.vocabularySize))] = 100 }
        for temperature: Float in [0, 1] {
            let r = try g.generate([SequenceRequest(prompt: ids, parameters: GenerateParameters(
                maxNewTokens: 80, temperature: temperature, seed: 3, logitBias: bias, constraint: c))])[0]
            assertTokensViable(r, c, "biased t=\(temperature)")
            XCTAssertEqual(r.finishReason, .stop, r.text)
            let v = try JSONSerialization.jsonObject(with: Data(r.text.utf8))
            XCTAssertNil(SchemaValidator.validate(v, try JSONSerialization.jsonObject(with: Data(Self.schemas[0].schema.utf8))), r.text)
        }
    }
}
