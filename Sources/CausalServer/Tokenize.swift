import CausalLM
import Foundation
import Hummingbird

// The tokenizer endpoints as vLLM serves them (evaluation harnesses such as lm-evaluation-harness's remote tokenizer
// call them): `POST /tokenize`, `POST /detokenize`, `GET /tokenizer_info`. Like vLLM they sit outside `/v1`, so an
// API key does not guard them.

extension OpenAIService {
    /// Registers the tokenizer endpoints.
    func addTokenizerRoutes(_ router: Router<ServerRequestContext>) {
        router.post("/tokenize") { request, _ in try await self.tokenize(request) }
        router.post("/detokenize") { request, _ in try await self.detokenize(request) }
        router.get("/tokenizer_info") { _, _ in try self.tokenizerInfo() }
    }

    /// Checks an optional `model` field against the served model's names.
    func checkModel(_ f: FieldReader) throws {
        if let m = try f.string("model"), !parser.acceptedModelNames.contains(m) {
            throw APIError(.notFound, "The model '\(m)' does not exist. This server serves \(parser.served).", param: "model", code: "model_not_found")
        }
    }

    /// `{"prompt": TEXT, "add_special_tokens": true}` or `{"messages": [...]}` (rendered as chat completions do) ->
    /// `{"count", "max_model_len", "tokens", "token_strs"}` (`token_strs` with `"return_token_strs": true`, else null).
    func tokenize(_ request: Request) async throws -> Response {
        let body = try await collectBody(request, limit: configuration.maxBodyBytes)
        let f = FieldReader(object: try RequestParser.jsonObject(body))
        try checkModel(f)
        let tokenizer = try bundle.tokenizer
        let ids: [Int]
        if f.has("messages") {
            guard !f.has("prompt") else {
                throw APIError.invalid("Give either 'prompt' or 'messages', not both.", param: "prompt")
            }
            if try f.bool("add_generation_prompt") == false {
                throw APIError.unsupported("'add_generation_prompt': false is not supported; the chat prompt always ends with the assistant's turn opening.",
                                           param: "add_generation_prompt")
            }
            let messages = try Self.plainMessages(f)
            do { ids = try bundle.chatPromptIDs(messages) } catch {
                throw APIError.invalid("The messages could not be rendered with the model's chat template: \(error)", param: "messages")
            }
        } else {
            guard let v = f.value("prompt") else {
                throw APIError.invalid("Missing required parameter: 'prompt' (or 'messages').", param: "prompt", code: "missing_required_parameter")
            }
            guard let text = v as? String, !isJSONBool(v) else { throw FieldReader.wrongType("prompt", expected: "a string", got: v) }
            do { ids = try tokenizer.encode(text, addingSpecialTokens: try f.bool("add_special_tokens") ?? true) } catch let e as APIError {
                throw e
            } catch {
                throw APIError.invalid("The prompt could not be tokenized: \(error)", param: "prompt")
            }
        }
        let strs: JSONValue = try f.bool("return_token_strs") == true ? .array(ids.map { .optional(tokenizer.tokenString($0)) }) : .null
        return jsonResponse(.object([("count", .int(ids.count)), ("max_model_len", .int(scheduler.contextLength)),
                                     ("tokens", .array(ids.map { .int($0) })), ("token_strs", strs)]))
    }

    /// `messages` as `{role, content}` (content a string or text parts), for `/tokenize`.
    static func plainMessages(_ f: FieldReader) throws -> [ChatMessage] {
        guard let a = f.value("messages") as? [Any], !a.isEmpty else {
            throw APIError.invalid("Invalid 'messages': expected a non-empty array of {role, content} objects.", param: "messages")
        }
        return try a.enumerated().map { i, m in
            let name = "messages[\(i)]"
            guard let o = m as? [String: Any] else { throw FieldReader.wrongType(name, expected: "an object", got: m) }
            let mf = FieldReader(object: o)
            guard let role = try mf.string("role") else {
                throw APIError.invalid("Missing required parameter: '\(name).role'.", param: "\(name).role", code: "missing_required_parameter")
            }
            var content = ""
            if let s = mf.value("content") as? String { content = s } else if let parts = mf.value("content") as? [Any] {
                content = parts.compactMap { ($0 as? [String: Any])?["text"] as? String }.joined()
            } else if let v = mf.value("content") {
                throw FieldReader.wrongType("\(name).content", expected: "a string or an array of text parts", got: v)
            }
            return ChatMessage(role: role == "developer" ? "system" : role, content: content)
        }
    }

    /// `{"tokens": [ids]}` -> `{"prompt": TEXT}` (special tokens kept, as the ids say).
    func detokenize(_ request: Request) async throws -> Response {
        let body = try await collectBody(request, limit: configuration.maxBodyBytes)
        let f = FieldReader(object: try RequestParser.jsonObject(body))
        try checkModel(f)
        guard let v = f.value("tokens") else {
            throw APIError.invalid("Missing required parameter: 'tokens'.", param: "tokens", code: "missing_required_parameter")
        }
        guard let a = v as? [Any] else { throw FieldReader.wrongType("tokens", expected: "an array of token ids", got: v) }
        let V = bundle.model.vocabularySize
        let ids = try a.enumerated().map { i, x in
            let id = try FieldReader.integer(x, key: "tokens[\(i)]")
            guard id >= 0 && id < V else {
                throw APIError.invalid("Invalid value for 'tokens[\(i)]': token id \(id) is outside the vocabulary (0..<\(V)).", param: "tokens")
            }
            return id
        }
        let text: String
        do { text = try bundle.tokenizer.decode(ids, skipSpecial: false) } catch {
            throw APIError.invalid("The tokens could not be decoded: \(error)", param: "tokens")
        }
        return jsonResponse(.object([("prompt", .string(text))]))
    }

    /// The tokenizer's facts: special tokens (text and id), chat template, context length, vocabulary size.
    func tokenizerInfo() throws -> Response {
        let t = try bundle.tokenizer
        func token(_ id: Int?) -> JSONValue { .optional(id.flatMap { t.tokenString($0) }) }
        func idValue(_ id: Int?) -> JSONValue { id.map { .int($0) } ?? .null }
        let pad = t.padTokenID ?? bundle.padTokenID
        let cls: String
        switch t {
        case is ByteLevelBPETokenizer: cls = "ByteLevelBPETokenizer"
        case is SentencePieceBPETokenizer: cls = "SentencePieceBPETokenizer"
        case is UnigramTokenizer: cls = "UnigramTokenizer"
        case is WordPieceTokenizer: cls = "WordPieceTokenizer"
        default: cls = "\(type(of: t))"
        }
        let addBOS: Bool
        switch t {
        case let b as ByteLevelBPETokenizer: addBOS = b.addBOS
        case let b as SentencePieceBPETokenizer: addBOS = b.addBOS
        default: addBOS = false
        }
        return jsonResponse(.object([
            ("tokenizer_class", .string(cls)), ("model", .string(modelID)),
            ("bos_token", token(t.bosTokenID)), ("bos_token_id", idValue(t.bosTokenID)),
            ("eos_token", token(t.eosTokenID)), ("eos_token_id", idValue(t.eosTokenID)),
            ("pad_token", token(pad)), ("pad_token_id", idValue(pad)),
            ("add_bos_token", .bool(addBOS)),
            ("end_token_ids", .array(bundle.endTokenIDs.sorted().map { .int($0) })),
            ("chat_template", .optional(bundle.chatTemplate?.source)),
            ("model_max_length", .int(scheduler.contextLength)), ("vocab_size", .int(t.vocabularySize)),
        ]))
    }
}
