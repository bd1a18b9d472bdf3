import Foundation
import CausalKernels

// The fp32 parameters of a BERT masked-LM (transformers' BertForMaskedLM) in one flat buffer, tensors under Hugging
// Face's names and shapes, and its checkpoints.
//
//   bert.embeddings.{word,position,token_type}_embeddings.weight, bert.embeddings.LayerNorm.{weight,bias}
//   bert.encoder.layer.N.attention.self.{query,key,value}.{weight,bias}, attention.output.dense.{weight,bias},
//     attention.output.LayerNorm.{weight,bias}, intermediate.dense.{weight,bias}, output.dense.{weight,bias},
//     output.LayerNorm.{weight,bias}
//   cls.predictions.transform.dense.{weight,bias}, cls.predictions.transform.LayerNorm.{weight,bias},
//   cls.predictions.bias; cls.predictions.decoder.weight only when the decoder is not tied to the word embeddings
//   (tie_word_embeddings false); the decoder's bias is cls.predictions.bias (transformers ties them).
//
// A checkpoint directory (BertMLMCheckpoint) holds model.safetensors (F32, those names; the tied decoder left out as
// transformers' save_pretrained leaves it out), config.json (the base model's, with architectures
// ["BertForMaskedLM"] and the shape fields rewritten), the base model's tokenizer files, optimizer.safetensors
// (layout "bert-mlm") and trainer_state.json (the commit point); every file written to a temporary name and renamed.

/// The architecture of a BERT masked-LM: the encoder's shape plus what the MLM head and initialisation need.
public struct BertMLMArchitecture: Sendable, Equatable {
    public var config: BertConfig
    /// The decoder (output projection) is the word-embedding matrix (tie_word_embeddings, default true).
    public var tiedEmbeddings: Bool
    /// Standard deviation of the initial weights (initializer_range, default 0.02).
    public var initializerRange: Double
    /// pad_token_id (default 0): its embedding row starts at zero and gets no gradient (nn.Embedding's padding_idx).
    public var padTokenID: Int?

    public init(config: BertConfig, tiedEmbeddings: Bool = true, initializerRange: Double = 0.02, padTokenID: Int? = 0) {
        self.config = config; self.tiedEmbeddings = tiedEmbeddings; self.initializerRange = initializerRange
        self.padTokenID = padTokenID
    }

    /// Reads a Hugging Face config.json (BertConfig's fields, tie_word_embeddings, initializer_range, pad_token_id).
    /// `vocabularySize`, when given, fills a missing vocab_size and must equal a present one. Errors name the field
    /// and the file.
    public init(path: String, vocabularySize: Int? = nil) throws {
        var c = try ConfigJSON(path: path)
        if let v = vocabularySize {
            if c.has("vocab_size") {
                let found = try c.int("vocab_size")
                guard found == v else {
                    throw c.invalid("vocab_size", "\(found) does not match the tokenizer's vocabulary of \(v) tokens (leave it out to use the tokenizer's)")
                }
            } else {
                var o = c.values
                o.append("vocab_size", .int(v))
                c = ConfigJSON(path: path, values: o)
            }
        }
        let cfg = try BertConfig(config: c)
        let range = try c.double("initializer_range", default: 0.02)
        guard range >= 0, range.isFinite else { throw c.invalid("initializer_range", "must be a non-negative number, found \(range)") }
        var pad: Int? = 0
        if c.has("pad_token_id") {
            if case .null? = c.values["pad_token_id"] { pad = nil } else { pad = try c.int("pad_token_id") }
        }
        if let p = pad, p < 0 || p >= cfg.vocabularySize {
            throw c.invalid("pad_token_id", "\(p) is outside the vocabulary (0..<\(cfg.vocabularySize))")
        }
        self.init(config: cfg, tiedEmbeddings: try c.bool("tie_word_embeddings", default: true), initializerRange: range,
                  padTokenID: pad)
    }
}

/// fp32 parameters (or gradients, or optimizer moments) of a BERT masked-LM in one flat buffer.
public final class BertParameters: FlatParameters, @unchecked Sendable {
    public struct Tensor: Sendable, Equatable {
        /// Hugging Face name (`bert.encoder.layer.0.attention.self.query.weight`).
        public let name: String
        /// [out, in] for linear weights, [rows, C] for embeddings, [n] for biases and norms.
        public let shape: [Int]
        public let offset: Int
        /// AdamW's weight decay applies (matrices and embeddings; not biases or LayerNorm, as transformers' Trainer).
        public let decays: Bool
        public var count: Int { shape.reduce(1, *) }
    }

    struct Linear { let weight: Int; let bias: Int }
    struct Norm { let weight: Int; let bias: Int }
    struct Layer {
        let q, k, v, attnOut: Linear
        let attnNorm: Norm
        let up, down: Linear
        let mlpNorm: Norm
    }

    public let architecture: BertMLMArchitecture
    public var config: BertConfig { architecture.config }
    public let tensors: [Tensor]
    public let count: Int
    public let data: UnsafeMutablePointer<Float>
    let wordEmbeddings: Int      // (V, C)
    let positionEmbeddings: Int  // (P, C)
    let typeEmbeddings: Int      // (types, C)
    let embedNorm: Norm
    let layers: [Layer]
    let headDense: Linear        // (C, C)
    let headNorm: Norm
    let headBias: Int            // (V)
    let decoder: Int             // (V, C): the word embeddings when tied

    /// Zero-filled parameters.
    public init(architecture: BertMLMArchitecture) {
        self.architecture = architecture
        let cfg = architecture.config
        let (C, F, V) = (cfg.hiddenSize, cfg.intermediateSize, cfg.vocabularySize)
        var tensors: [Tensor] = []
        var offset = 0
        func add(_ name: String, _ shape: [Int]) -> Int {
            tensors.append(Tensor(name: name, shape: shape, offset: offset, decays: shape.count == 2))
            defer { offset += shape.reduce(1, *) }
            return offset
        }
        func linear(_ p: String, _ out: Int, _ inp: Int) -> Linear { Linear(weight: add(p + ".weight", [out, inp]), bias: add(p + ".bias", [out])) }
        func norm(_ p: String) -> Norm { Norm(weight: add(p + ".weight", [C]), bias: add(p + ".bias", [C])) }
        wordEmbeddings = add("bert.embeddings.word_embeddings.weight", [V, C])
        positionEmbeddings = add("bert.embeddings.position_embeddings.weight", [cfg.maxPositions, C])
        typeEmbeddings = add("bert.embeddings.token_type_embeddings.weight", [cfg.typeVocabularySize, C])
        embedNorm = norm("bert.embeddings.LayerNorm")
        layers = (0..<cfg.layerCount).map { l in
            let p = "bert.encoder.layer.\(l)."
            return Layer(q: linear(p + "attention.self.query", C, C), k: linear(p + "attention.self.key", C, C),
                         v: linear(p + "attention.self.value", C, C), attnOut: linear(p + "attention.output.dense", C, C),
                         attnNorm: norm(p + "attention.output.LayerNorm"), up: linear(p + "intermediate.dense", F, C),
                         down: linear(p + "output.dense", C, F), mlpNorm: norm(p + "output.LayerNorm"))
        }
        headDense = linear("cls.predictions.transform.dense", C, C)
        headNorm = norm("cls.predictions.transform.LayerNorm")
        headBias = add("cls.predictions.bias", [V])
        decoder = architecture.tiedEmbeddings ? wordEmbeddings : add("cls.predictions.decoder.weight", [V, C])
        self.tensors = tensors
        count = offset
        data = .allocate(capacity: max(offset, 1))
        data.initialize(repeating: 0, count: max(offset, 1))
    }

    deinit { data.deallocate() }

    public func zerosLike() -> BertParameters { BertParameters(architecture: architecture) }
    public func zeroBuffer() -> any FlatParameters { zerosLike() }
    public var decaySegments: [(offset: Int, count: Int, decays: Bool)] { tensors.map { ($0.offset, $0.count, $0.decays) } }
    public func zero() { data.update(repeating: 0, count: count) }

    public func clone() -> BertParameters {
        let c = zerosLike()
        c.data.update(from: data, count: count)
        return c
    }

    /// The tensor with this Hugging Face name.
    public func tensor(_ name: String) -> Tensor? { tensors.first { $0.name == name } }

    public func values(_ t: Tensor) -> UnsafeMutableBufferPointer<Float> {
        UnsafeMutableBufferPointer(start: data + t.offset, count: t.count)
    }

    /// The names of the MLM head's own tensors (absent from an encoder-only checkpoint such as all-MiniLM-L6-v2).
    static let headNames: Set<String> = ["cls.predictions.transform.dense.weight", "cls.predictions.transform.dense.bias",
                                         "cls.predictions.transform.LayerNorm.weight", "cls.predictions.transform.LayerNorm.bias",
                                         "cls.predictions.bias", "cls.predictions.decoder.weight"]

    /// Freshly initialised parameters, as transformers' BertPreTrainedModel._init_weights: every linear weight and
    /// embedding from normal(0, initializer_range) (one seeded SequenceRNG stream, Box-Muller, tensor by tensor in
    /// `tensors` order), biases 0, LayerNorm weights 1, the padding token's embedding row 0.
    public convenience init(initializing arch: BertMLMArchitecture, seed: UInt64) {
        self.init(architecture: arch)
        initialize(seed: seed, only: nil)
    }

    /// Initialises the tensors named in `only` (all when nil) as `init(initializing:seed:)` does.
    func initialize(seed: UInt64, only: Set<String>?) {
        var rng = SequenceRNG(seed: seed)
        var spare: Double?
        func normal() -> Double {
            if let s = spare { spare = nil; return s }
            let u1 = 1 - rng.nextUnitFloat(), u2 = rng.nextUnitFloat()
            let r = (-2 * Foundation.log(u1)).squareRoot(), a = 2 * Double.pi * u2
            spare = r * Foundation.sin(a)
            return r * Foundation.cos(a)
        }
        let std = architecture.initializerRange
        for t in tensors where only?.contains(t.name) ?? true {
            let v = values(t)
            if t.shape.count == 2 {
                for i in 0..<v.count { v[i] = Float(normal() * std) }
            } else if t.name.hasSuffix("LayerNorm.weight") {
                v.update(repeating: 1)
            } else {
                v.update(repeating: 0)
            }
        }
        if let pad = architecture.padTokenID, only?.contains("bert.embeddings.word_embeddings.weight") ?? true {
            (data + wordEmbeddings + pad * config.hiddenSize).update(repeating: 0, count: config.hiddenSize)
        }
    }

    /// Reads a BERT directory (config.json + model.safetensors or a sharded index; F32/F16/BF16): a BertForMaskedLM
    /// checkpoint (ours or transformers'), or an encoder alone (BertModel names with or without `bert.`, LayerNorm
    /// gamma/beta accepted), whose MLM head is then initialised from `headSeed` as transformers would
    /// (`headInitialized` says so). Pooler and next-sentence tensors are ignored. Errors name the file and tensor.
    public convenience init(directory: String, headSeed: UInt64 = 0) throws {
        let arch = try BertMLMArchitecture(path: directory + "/config.json")
        let ckpt = try SafetensorsCheckpoint(path: directory)
        try self.init(architecture: arch, checkpoint: ckpt, headSeed: headSeed)
    }

    /// Whether the MLM head came from `headSeed` rather than the checkpoint.
    public private(set) var headInitialized = false

    public convenience init(architecture arch: BertMLMArchitecture, checkpoint: SafetensorsCheckpoint, headSeed: UInt64 = 0) throws {
        self.init(architecture: arch)
        let root = checkpoint.has("bert.embeddings.word_embeddings.weight") ? "bert." : ""
        let hasHead = checkpoint.has("cls.predictions.transform.dense.weight")
        for t in tensors {
            let isHead = Self.headNames.contains(t.name)
            if isHead && !hasHead { continue }
            var name = isHead ? t.name : root + t.name.dropFirst("bert.".count)
            if !isHead && !checkpoint.has(name) && name.hasSuffix("LayerNorm.weight") {
                name = String(name.dropLast("weight".count)) + "gamma"
            } else if !isHead && !checkpoint.has(name) && name.hasSuffix("LayerNorm.bias") {
                name = String(name.dropLast("bias".count)) + "beta"
            }
            if isHead && t.name == "cls.predictions.decoder.weight" && !checkpoint.has(name) {
                throw CausalError.badTensor(path: checkpoint.path, tensor: name,
                                            reason: "missing: config.json says tie_word_embeddings false, so the decoder has its own weights")
            }
            let rows = t.shape.count == 2 ? t.shape[0] : 1, cols = t.shape.last!
            let (f, st) = try checkpoint.tensor(name)
            guard st.shape == t.shape else {
                throw CausalError.badTensor(path: f.path, tensor: name, reason: "shape \(st.shape) does not match the expected \(t.shape)")
            }
            if t.shape.count == 2 {
                dequantizeAll(try checkpoint.matrix(name, rows: rows, cols: cols), into: data + t.offset)
            } else {
                (data + t.offset).update(from: try checkpoint.vector(name, count: cols), count: cols)
            }
        }
        if !hasHead {
            initialize(seed: headSeed, only: Self.headNames)
            headInitialized = true
        }
    }
}

/// Checkpoints of BERT masked-LMs that transformers' BertForMaskedLM loads.
public enum BertMLMCheckpoint {
    /// The optimizer file's layout tag: moments in BertParameters' tensor order.
    static let optimizerLayout = "bert-mlm"

    /// Writes `model.safetensors` and `config.json` into `directory`. `baseConfig` (the starting model's config.json,
    /// or the --config of a run from scratch) is kept except for the fields written here.
    public static func save(_ p: BertParameters, to directory: String, baseConfig: HFJSONObject = HFJSONObject()) throws {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let entries: [(String, [Int], (UnsafeMutablePointer<Float>) -> Void)] = p.tensors.map { t in
            let src = p.data + t.offset
            return (t.name, t.shape, { $0.update(from: src, count: t.count) })
        }
        try LlamaCheckpoint.writeSafetensors(entries, metadata: ["format": "pt"], to: directory + "/model.safetensors")
        let ours = hfConfig(p.architecture)
        let oursByKey = Dictionary(ours, uniquingKeysWith: { $1 })
        var members: [(String, HFJSON)] = []
        var seen = Set<String>()
        for (k, v) in baseConfig.members where !seen.contains(k) {
            seen.insert(k)
            members.append((k, oursByKey[k] ?? v))
        }
        for (k, v) in ours where !seen.contains(k) { members.append((k, v)) }
        let text = T5Checkpoint.jsonText(.object(HFJSONObject(members)), indent: 0) + "\n"
        try LlamaCheckpoint.atomicWrite(directory + "/config.json") { try $0.write(contentsOf: Data(text.utf8)) }
    }

    /// The whole checkpoint: model, config, optimizer moments, then the state (the commit point).
    public static func save(_ p: BertParameters, optimizer: AdamW, state: TrainingState, to directory: String,
                            baseConfig: HFJSONObject = HFJSONObject()) throws {
        guard optimizer.m.count == p.count else {
            throw CausalError.invalidArgument("the optimizer's state (\(optimizer.m.count) values) does not match the model's \(p.count) parameters")
        }
        try save(p, to: directory, baseConfig: baseConfig)
        try LlamaCheckpoint.saveOptimizerState(optimizer, state: state, layout: optimizerLayout, to: directory)
    }

    /// config.json fields for BertForMaskedLM of this shape, typed as transformers' BertConfig declares them.
    public static func hfConfig(_ a: BertMLMArchitecture) -> [(String, HFJSON)] {
        let c = a.config
        let act: String
        switch c.activation {
        case .gelu: act = "gelu"
        case .geluTanh: act = "gelu_pytorch_tanh"
        case .relu: act = "relu"
        }
        return [
            ("architectures", .array([.string("BertForMaskedLM")])), ("model_type", .string("bert")),
            ("vocab_size", .int(c.vocabularySize)), ("hidden_size", .int(c.hiddenSize)),
            ("num_hidden_layers", .int(c.layerCount)), ("num_attention_heads", .int(c.headCount)),
            ("intermediate_size", .int(c.intermediateSize)), ("hidden_act", .string(act)),
            ("max_position_embeddings", .int(c.maxPositions)), ("type_vocab_size", .int(c.typeVocabularySize)),
            ("layer_norm_eps", .double(c.layerNormEps)), ("initializer_range", .double(a.initializerRange)),
            ("position_embedding_type", .string("absolute")), ("tie_word_embeddings", .bool(a.tiedEmbeddings)),
            ("pad_token_id", a.padTokenID.map { .int($0) } ?? .null), ("dtype", .string("float32")),
        ]
    }

    /// The files of a model directory that describe its tokenizer (copied into checkpoints).
    public static let tokenizerFiles = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
                                        "added_tokens.json"]

    /// Copies the `tokenizerFiles` that `source` has into `directory` (atomically).
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

    /// Reads the run state and optimizer moments of a checkpoint into `optimizer` (made for the same model).
    public static func loadState(directory: String, into optimizer: AdamW) throws -> TrainingState {
        let op = directory + "/optimizer.safetensors"
        if FileManager.default.fileExists(atPath: op) {
            let layout = try SafetensorsFile(path: op).metadata["layout"]
            guard layout == optimizerLayout else {
                throw CausalError.badFormat(path: op, field: "layout",
                                            reason: "the optimizer state is laid out as '\(layout ?? "?")', not a BERT masked-LM trainer's ('\(optimizerLayout)')")
            }
        }
        return try LlamaCheckpoint.loadState(directory: directory, into: optimizer)
    }
}
