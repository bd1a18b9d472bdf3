import Foundation
import CausalKernels

// Checkpoints of fine-tuned T5 models in Hugging Face's format (T5ForConditionalGeneration loads them, and so do
// T5Model / ModelBundle), and the optimizer state to resume from.
//
// A checkpoint directory holds
//   model.safetensors       every parameter, F32, HF tensor names and shapes (shared.weight,
//                           encoder.block.N.layer.0.SelfAttention.q.weight, ..., lm_head.weight when untied)
//   config.json             T5ForConditionalGeneration: the base model's config.json with the shape fields rewritten
//   optimizer.safetensors   AdamW moments exp_avg / exp_avg_sq, flat in T5Parameters' tensor order (layout "t5"),
//                           and the step
//   trainer_state.json      step, total steps, seed and the run's facts; written last (the commit point)
// Every file is written to a temporary name in the directory and renamed over the old one (LlamaCheckpoint's
// atomic writers).

public enum T5Checkpoint {
    /// The optimizer file's layout tag: moments in T5Parameters' tensor order.
    static let optimizerLayout = "t5"

    /// Writes `model.safetensors` and `config.json` into `directory` (created if needed). `baseConfig` (e.g. the
    /// starting model's config.json, `readConfigObject`) is kept, in its order and with its number types, except for
    /// the fields this writes.
    public static func save(_ p: T5Parameters, to directory: String, baseConfig: HFJSONObject = HFJSONObject()) throws {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let entries: [(String, [Int], (UnsafeMutablePointer<Float>) -> Void)] = p.tensors.map { t in
            let src = p.data + t.offset
            return (t.name, t.shape, { $0.update(from: src, count: t.count) })
        }
        try LlamaCheckpoint.writeSafetensors(entries, metadata: ["format": "pt"], to: directory + "/model.safetensors")
        var ours = hfConfig(p.config)
        if p.config.contextLength != 512 || baseConfig["n_positions"] != nil { ours.append(("n_positions", .int(p.config.contextLength))) }
        let oursByKey = Dictionary(ours, uniquingKeysWith: { $1 })
        var members: [(String, HFJSON)] = []
        var seen = Set<String>()
        for (k, v) in baseConfig.members where !seen.contains(k) {
            seen.insert(k)
            members.append((k, oursByKey[k] ?? v))
        }
        for (k, v) in ours where !seen.contains(k) { members.append((k, v)) }
        let text = jsonText(.object(HFJSONObject(members)), indent: 0) + "\n"
        try LlamaCheckpoint.atomicWrite(directory + "/config.json") { try $0.write(contentsOf: Data(text.utf8)) }
    }

    /// The whole checkpoint: model, config, optimizer moments, then the state (the commit point).
    public static func save(_ p: T5Parameters, optimizer: AdamW, state: TrainingState, to directory: String,
                            baseConfig: HFJSONObject = HFJSONObject()) throws {
        guard optimizer.m.count == p.count else {
            throw CausalError.invalidArgument("the optimizer's state (\(optimizer.m.count) values) does not match the model's \(p.count) parameters")
        }
        try save(p, to: directory, baseConfig: baseConfig)
        try LlamaCheckpoint.saveOptimizerState(optimizer, state: state, layout: optimizerLayout, to: directory)
    }

    /// Hugging Face's config.json fields for a T5 of this shape, typed as transformers' T5Config declares them
    /// (its strict dataclass validation refuses an integer where a float is declared: layer_norm_epsilon is written
    /// as a number with a fraction or exponent).
    public static func hfConfig(_ c: T5Config) -> [(String, HFJSON)] {
        let ff: String, act: String
        switch c.feedForward {
        case .relu: (ff, act) = ("relu", "relu")
        case .gelu: (ff, act) = ("gelu", "gelu")
        case .gatedGelu: (ff, act) = ("gated-gelu", "gelu_new")
        case .gatedRelu: (ff, act) = ("gated-relu", "relu")
        }
        return [
            ("architectures", .array([.string("T5ForConditionalGeneration")])), ("model_type", .string("t5")),
            ("is_encoder_decoder", .bool(true)), ("vocab_size", .int(c.vocabularySize)), ("d_model", .int(c.modelDim)),
            ("d_kv", .int(c.headDim)), ("d_ff", .int(c.feedForwardDim)), ("num_layers", .int(c.encoderLayerCount)),
            ("num_decoder_layers", .int(c.decoderLayerCount)), ("num_heads", .int(c.headCount)),
            ("relative_attention_num_buckets", .int(c.relativeBuckets)),
            ("relative_attention_max_distance", .int(c.relativeMaxDistance)), ("layer_norm_epsilon", .double(c.layerNormEps)),
            ("feed_forward_proj", .string(ff)), ("dense_act_fn", .string(act)), ("is_gated_act", .bool(c.feedForward.isGated)),
            ("tie_word_embeddings", .bool(c.tiedEmbeddings)), ("scale_decoder_outputs", .bool(c.scaleDecoderOutputs)),
            ("decoder_start_token_id", .int(c.decoderStartTokenID)),
            ("eos_token_id", c.eosTokenIDs.count == 1 ? .int(c.eosTokenIDs[0]) : .array(c.eosTokenIDs.map { .int($0) })),
            ("pad_token_id", .int(c.padTokenID)), ("dtype", .string("float32")),
        ]
    }

    /// JSON text of a value, objects indented by two spaces; a non-integer number always has a fraction or an exponent
    /// ("8.0", "1e-06"), so it reads back as a float.
    static func jsonText(_ v: HFJSON, indent: Int) -> String {
        let pad = String(repeating: "  ", count: indent + 1), end = String(repeating: "  ", count: indent)
        switch v {
        case .null: return "null"
        case let .bool(b): return b ? "true" : "false"
        case let .int(i): return String(i)
        case let .double(d):
            guard d.isFinite else { return "null" }
            let t = "\(d)"
            return t.contains(".") || t.contains("e") ? t : t + ".0"
        case let .string(s): return JSONText.quoted(s)
        case let .array(a):
            if a.isEmpty { return "[]" }
            if a.allSatisfy({ if case .object = $0 { return false }; if case .array = $0 { return false }; return true }) {
                return "[" + a.map { jsonText($0, indent: indent + 1) }.joined(separator: ", ") + "]"
            }
            return "[\n" + a.map { pad + jsonText($0, indent: indent + 1) }.joined(separator: ",\n") + "\n" + end + "]"
        case let .object(o):
            if o.isEmpty { return "{}" }
            return "{\n" + o.members.map { pad + JSONText.quoted($0) + ": " + jsonText($1, indent: indent + 1) }.joined(separator: ",\n") + "\n" + end + "}"
        }
    }

    /// A directory's config.json as a JSON object (to carry into a checkpoint's config).
    public static func readConfigObject(directory: String) throws -> HFJSONObject {
        let path = directory + "/config.json"
        guard let o = try HFJSON.parse(contentsOf: path).objectValue else {
            throw CausalError.badFormat(path: path, field: "config", reason: "not a JSON object")
        }
        return o
    }

    /// The files of a model directory that describe its tokenizer and generation defaults; `copyTokenizerFiles`
    /// puts them into a checkpoint so that it runs on its own (text in, text out).
    public static let tokenizerFiles = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "spiece.model",
                                        "added_tokens.json", "generation_config.json"]

    /// Copies the `tokenizerFiles` that `source` has into `directory` (atomically, following symbolic links).
    public static func copyTokenizerFiles(from source: String, to directory: String) throws {
        let fm = FileManager.default
        func canonical(_ p: String) -> String { URL(fileURLWithPath: p).resolvingSymlinksInPath().standardizedFileURL.path }
        guard canonical(source) != canonical(directory) else { return }
        for f in tokenizerFiles {
            let src = source + "/" + f
            guard fm.fileExists(atPath: src) else { continue }
            guard let d = fm.contents(atPath: src) else { throw CausalError.io(path: src, reason: "cannot read") }
            try LlamaCheckpoint.atomicWrite(directory + "/" + f) { try $0.write(contentsOf: d) }
        }
    }

    /// Reads a T5 directory (ours or Hugging Face's) into trainer parameters.
    public static func load(directory: String) throws -> T5Parameters { try T5Parameters(directory: directory) }

    /// Reads the run state and the optimizer moments of a checkpoint into `optimizer` (made for the same model).
    public static func loadState(directory: String, into optimizer: AdamW) throws -> TrainingState {
        let op = directory + "/optimizer.safetensors"
        if FileManager.default.fileExists(atPath: op) {
            let layout = try SafetensorsFile(path: op).metadata["layout"]
            guard layout == optimizerLayout else {
                throw CausalError.badFormat(path: op, field: "layout",
                                            reason: "the optimizer state is laid out as '\(layout ?? "?")', not a T5 trainer's ('\(optimizerLayout)')")
            }
        }
        return try LlamaCheckpoint.loadState(directory: directory, into: optimizer)
    }
}
