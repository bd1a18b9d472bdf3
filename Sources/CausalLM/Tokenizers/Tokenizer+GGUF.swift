// Building the tokenizer from GGUF metadata (llama.cpp's `tokenizer.ggml.*` keys).

extension ByteLevelBPETokenizer {
    /// Reads `tokenizer.ggml.model` (must be "gpt2"), `.tokens`, `.token_type` (optional: all normal), `.merges`,
    /// `.pre` (optional: "default"), `.bos_token_id`, `.eos_token_id`, `.padding_token_id`, `.unknown_token_id`
    /// (each optional) and `.add_bos_token` (optional: false).
    /// Errors are `CausalError.badFormat` naming the file and the key.
    public convenience init(gguf: GGUFFile) throws {
        let model = try gguf.string("tokenizer.ggml.model")
        guard model == "gpt2" else {
            throw CausalError.badFormat(path: gguf.path, field: "tokenizer.ggml.model",
                                        reason: "unsupported tokenizer model '\(model)': only \"gpt2\" (byte-level BPE) is supported")
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
