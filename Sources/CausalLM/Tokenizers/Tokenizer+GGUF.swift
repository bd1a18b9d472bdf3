// Building tokenizers from GGUF metadata (llama.cpp's `tokenizer.ggml.*` keys), and the ids that end generation.

/// The tokenizer a GGUF file describes, chosen by `tokenizer.ggml.model`: "gpt2" → `ByteLevelBPETokenizer`
/// (pre-tokenizer from `tokenizer.ggml.pre`), "llama" → `SentencePieceBPETokenizer`. Any other model is an error
/// naming the file and key.
public func makeTokenizer(gguf: GGUFFile) throws -> any TextTokenizer {
    let model = try gguf.string("tokenizer.ggml.model")
    switch model {
    case "gpt2": return try ByteLevelBPETokenizer(gguf: gguf)
    case "llama": return try SentencePieceBPETokenizer(gguf: gguf)
    default:
        throw CausalError.badFormat(path: gguf.path, field: "tokenizer.ggml.model",
                                    reason: "unsupported tokenizer model '\(model)' (supported: \"gpt2\" byte-level BPE, \"llama\" SentencePiece BPE)")
    }
}

/// The texts of control tokens that end a turn in the families the engine runs: ChatML (`<|im_end|>`; Qwen, SmolLM2),
/// `<|endoftext|>` (GPT-2, Qwen, SmolLM2), Gemma (`<end_of_turn>`, `<eos>`), Llama 3 (`<|eot_id|>`, `<|eom_id|>`,
/// `<|end_of_text|>`) and SentencePiece's `</s>`.
public let endOfGenerationMarkers: [String] = [
    "<|im_end|>", "<|endoftext|>", "<end_of_turn>", "<|eot_id|>", "<|eom_id|>", "<|end_of_text|>", "</s>", "<eos>",
]

/// Every token id that ends a turn, from GGUF metadata: `tokenizer.ggml.eos_token_id`, `.eot_token_id` and
/// `.eom_token_id` (each when present), plus every control token (`tokenizer.ggml.token_type` 3) whose text is one
/// of `endOfGenerationMarkers`. A marker that is not a control token is left out (Gemma 3's `</s>` is a user-defined
/// HTML tag, which llama.cpp's text-only rule would wrongly end on). Errors name the file and key.
public func endOfGenerationIDs(gguf: GGUFFile) throws -> Set<Int> {
    let tokens = try gguf.array("tokenizer.ggml.tokens")
    guard tokens.elementType == .string else {
        throw CausalError.badFormat(path: gguf.path, field: "tokenizer.ggml.tokens", reason: "expected array of string, found array of \(tokens.elementType)")
    }
    let n = tokens.count
    var ids = Set<Int>()
    for key in ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"] where gguf.has(key) {
        let id = try gguf.int(key)
        guard id >= 0 && id < n else {
            throw CausalError.badFormat(path: gguf.path, field: key, reason: "token id \(id) is outside the vocabulary (0..<\(n))")
        }
        ids.insert(id)
    }
    guard gguf.has("tokenizer.ggml.token_type") else { return ids }
    let types = try gguf.intArray("tokenizer.ggml.token_type")
    guard types.count == n else {
        throw CausalError.badFormat(path: gguf.path, field: "tokenizer.ggml.token_type",
                                    reason: "\(types.count) token types for \(n) tokens (tokenizer.ggml.tokens); the counts must match")
    }
    // Compare the stored bytes directly (no String per token: Gemma 3 has 262,144).
    let markers = endOfGenerationMarkers.map { Array($0.utf8) }
    for (id, off) in tokens.stringOffsets.enumerated() where types[id] == TokenType.control {
        let len = Int(gguf.file.base.loadUnaligned(fromByteOffset: off, as: UInt64.self))
        guard len <= 16 else { continue }
        let bytes = UnsafeRawBufferPointer(start: gguf.file.base + off + 8, count: len)
        if markers.contains(where: { $0.elementsEqual(bytes) }) { ids.insert(id) }
    }
    return ids
}

/// Every token id that ends a turn for a tokenizer read from elsewhere (a Hugging Face directory): `eos` (the
/// config's `eos_token_id` list) plus each special token whose text is one of `endOfGenerationMarkers` (a control
/// token for GGUF-style vocabularies; a special added token for tokenizer.json ones).
public func endOfGenerationIDs(tokenizer: any TextTokenizer, eos: [Int] = []) -> Set<Int> {
    var ids = Set(eos)
    if let e = tokenizer.eosTokenID { ids.insert(e) }
    for m in endOfGenerationMarkers {
        guard let id = tokenizer.tokenID(m) else { continue }
        let isControl: Bool
        switch tokenizer {
        case let t as ByteLevelBPETokenizer: isControl = t.tokenType(id) == TokenType.control
        case let t as SentencePieceBPETokenizer: isControl = t.tokenType(id) == TokenType.control
        default: isControl = tokenizer.isSpecial(id)
        }
        if isControl { ids.insert(id) }
    }
    return ids
}

extension GGUFFile {
    /// A float array (`tokenizer.ggml.scores`: float32, or int32 as llama.cpp also accepts).
    func tokenizerFloats(_ key: String) throws -> [Float] {
        let a = try array(key)
        switch a.elementType {
        case .float32:
            return (0..<a.count).map { Float(bitPattern: file.base.loadUnaligned(fromByteOffset: a.offset + 4 * $0, as: UInt32.self)) }
        case .int32:
            return (0..<a.count).map { Float(file.base.loadUnaligned(fromByteOffset: a.offset + 4 * $0, as: Int32.self)) }
        default:
            throw CausalError.badFormat(path: path, field: key, reason: "expected array of float32, found array of \(a.elementType)")
        }
    }
}

extension ByteLevelBPETokenizer {
    /// Reads `tokenizer.ggml.model` (must be "gpt2"), `.tokens`, `.token_type` (optional: all normal), `.merges`,
    /// `.pre` (optional: "default"), `.bos_token_id`, `.eos_token_id`, `.padding_token_id`, `.unknown_token_id`
    /// (each optional) and `.add_bos_token` (optional: false).
    /// Errors are `CausalError.badFormat` naming the file and the key.
    public convenience init(gguf: GGUFFile) throws {
        let model = try gguf.string("tokenizer.ggml.model")
        guard model == "gpt2" else {
            throw CausalError.badFormat(path: gguf.path, field: "tokenizer.ggml.model",
                                        reason: "unsupported tokenizer model '\(model)': only \"gpt2\" (byte-level BPE) is supported here (\"llama\": SentencePieceBPETokenizer)")
        }
        let tokens = try gguf.stringArray("tokenizer.ggml.tokens")
        let types = gguf.has("tokenizer.ggml.token_type")
            ? try gguf.intArray("tokenizer.ggml.token_type")
            : [Int](repeating: TokenType.normal, count: tokens.count)
        let merges = try gguf.stringArray("tokenizer.ggml.merges")
        let pre = gguf.has("tokenizer.ggml.pre") ? try gguf.string("tokenizer.ggml.pre") : "default"
        func optionalID(_ key: String) throws -> Int? { gguf.has(key) ? try gguf.int(key) : nil }
        let bos = try optionalID("tokenizer.ggml.bos_token_id")
        let eos = try optionalID("tokenizer.ggml.eos_token_id")
        let pad = try optionalID("tokenizer.ggml.padding_token_id")
        let unk = try optionalID("tokenizer.ggml.unknown_token_id")
        let addBOS = gguf.has("tokenizer.ggml.add_bos_token") ? try gguf.bool("tokenizer.ggml.add_bos_token") : false
        do {
            try self.init(tokens: tokens, tokenTypes: types, merges: merges, preTokenizer: pre,
                          bosTokenID: bos, eosTokenID: eos, padTokenID: pad, unknownTokenID: unk, addBOS: addBOS)
        } catch let CausalError.badConfig(key, reason) {
            throw CausalError.badFormat(path: gguf.path, field: key, reason: reason)
        }
    }
}

extension SentencePieceBPETokenizer {
    /// Reads `tokenizer.ggml.model` (must be "llama"), `.tokens`, `.scores`, `.token_type` (optional: all normal),
    /// `.bos_token_id`, `.eos_token_id`, `.padding_token_id`, `.unknown_token_id` (each optional),
    /// `.add_bos_token` (optional: true, llama.cpp's default for this model) and `.add_space_prefix` (optional: true).
    /// Errors are `CausalError.badFormat` naming the file and the key.
    public convenience init(gguf: GGUFFile) throws {
        let model = try gguf.string("tokenizer.ggml.model")
        guard model == "llama" else {
            throw CausalError.badFormat(path: gguf.path, field: "tokenizer.ggml.model",
                                        reason: "'\(model)' is not a SentencePiece BPE vocabulary (expected \"llama\")")
        }
        let tokens = try gguf.stringArray("tokenizer.ggml.tokens")
        let scores = try gguf.tokenizerFloats("tokenizer.ggml.scores")
        let types = gguf.has("tokenizer.ggml.token_type")
            ? try gguf.intArray("tokenizer.ggml.token_type")
            : [Int](repeating: TokenType.normal, count: tokens.count)
        func optionalID(_ key: String) throws -> Int? { gguf.has(key) ? try gguf.int(key) : nil }
        func flag(_ key: String, _ otherwise: Bool) throws -> Bool { gguf.has(key) ? try gguf.bool(key) : otherwise }
        if try flag("tokenizer.ggml.remove_extra_whitespaces", false) {
            throw CausalError.badFormat(path: gguf.path, field: "tokenizer.ggml.remove_extra_whitespaces",
                                        reason: "true is not supported (runs of spaces would be merged)")
        }
        if try flag("tokenizer.ggml.add_eos_token", false) {
            throw CausalError.badFormat(path: gguf.path, field: "tokenizer.ggml.add_eos_token",
                                        reason: "true is not supported (an EOS after every encoded text)")
        }
        do {
            try self.init(tokens: tokens, scores: scores, tokenTypes: types,
                          bosTokenID: try optionalID("tokenizer.ggml.bos_token_id"),
                          eosTokenID: try optionalID("tokenizer.ggml.eos_token_id"),
                          padTokenID: try optionalID("tokenizer.ggml.padding_token_id"),
                          unknownTokenID: try optionalID("tokenizer.ggml.unknown_token_id"),
                          addBOS: try flag("tokenizer.ggml.add_bos_token", true),
                          addSpacePrefix: try flag("tokenizer.ggml.add_space_prefix", true))
        } catch let CausalError.badConfig(key, reason) {
            throw CausalError.badFormat(path: gguf.path, field: key, reason: reason)
        }
    }
}
