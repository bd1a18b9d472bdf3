import Foundation
import CausalKernels
import CCausalKernels

// Checkpoints of fine-tuned LLaMA models, in Hugging Face's format, and the optimizer state to resume from.
//
// A checkpoint directory holds
//   model.safetensors       every parameter, F32, HF tensor names and HF layout (q_proj/k_proj rows put back in
//                           HF's order: GGUF's converter permutes them for adjacent-pair RoPE; we undo that)
//   config.json             LlamaForCausalLM, with tie_word_embeddings
//   optimizer.safetensors   AdamW moments exp_avg / exp_avg_sq (flat, in the trainer's GGUF row layout) and the step
//   trainer_state.json      step, epoch, seed and the rest of the run's position; written last
// Each file is written to a temporary name in the directory and renamed over the old one, so a reader never sees a
// half-written file; trainer_state.json is the commit point (its step must match the optimizer file's).
//
// safetensors layout: u64 little-endian header length N, N bytes of JSON (padded with spaces so the data starts at a
// multiple of 8), then the tensors' bytes back to back in header order.

public enum LlamaCheckpoint {
    // MARK: Q/K row order

    /// GGUF row order → Hugging Face's, for a Q or K matrix of `heads` heads of `headDim` rows:
    /// HF row h·D + a·D/2 + i is GGUF row h·D + 2i + a.
    public static func hfRowOrder(ofGGUFRow r: Int, headDim D: Int) -> Int {
        let h = r / D, j = r % D
        return h * D + (j % 2) * (D / 2) + j / 2
    }

    /// Copies a (rows, cols) matrix from GGUF row order to HF's (`toHF`) or back.
    static func permuteRows(_ src: UnsafePointer<Float>, _ dst: UnsafeMutablePointer<Float>, rows: Int, cols: Int,
                            headDim: Int, toHF: Bool) {
        for r in 0..<rows {
            let h = hfRowOrder(ofGGUFRow: r, headDim: headDim)
            if toHF { (dst + h * cols).update(from: src + r * cols, count: cols) }
            else { (dst + r * cols).update(from: src + h * cols, count: cols) }
        }
    }

    // MARK: Writing

    /// Writes `model.safetensors` and `config.json` into `directory` (created if needed).
    /// `extraConfig` adds keys to config.json (e.g. token ids).
    public static func save(_ p: LlamaParameters, to directory: String, extraConfig: [String: Any] = [:]) throws {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let D = p.config.headDim
        var entries: [(String, [Int], (UnsafeMutablePointer<Float>) -> Void)] = []
        for t in p.tensors {
            let src = p.data + t.offset
            if t.permutedHeads != nil {
                entries.append((t.name, t.shape, { permuteRows(src, $0, rows: t.shape[0], cols: t.shape[1], headDim: D, toHF: true) }))
            } else {
                entries.append((t.name, t.shape, { $0.update(from: src, count: t.count) }))
            }
        }
        try writeSafetensors(entries, metadata: ["format": "pt"], to: directory + "/model.safetensors")
        var cfg = hfConfig(p.config, tied: p.tiedEmbeddings)
        for (k, v) in extraConfig { cfg[k] = v }
        try writeJSON(cfg, to: directory + "/config.json")
    }

    /// Hugging Face's config.json for a LLaMA of this shape.
    public static func hfConfig(_ c: LlamaConfig, tied: Bool) -> [String: Any] {
        [
            "architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "vocab_size": c.vocabularySize, "hidden_size": c.hiddenSize, "intermediate_size": c.intermediateSize,
            "num_hidden_layers": c.layerCount, "num_attention_heads": c.headCount, "num_key_value_heads": c.kvHeadCount,
            "head_dim": c.headDim, "hidden_act": "silu", "rms_norm_eps": c.rmsNormEps, "rope_theta": c.ropeTheta,
            "max_position_embeddings": c.contextLength, "tie_word_embeddings": tied, "attention_bias": false,
            "mlp_bias": false, "torch_dtype": "float32",
        ]
    }

    /// Writes F32 tensors (name, shape, fill) as a safetensors file, atomically.
    static func writeSafetensors(_ tensors: [(String, [Int], (UnsafeMutablePointer<Float>) -> Void)], metadata: [String: String],
                                 to path: String) throws {
        var header = "{\"__metadata__\":{" + metadata.sorted { $0.key < $1.key }
            .map { "\(jsonQuote($0.key)):\(jsonQuote($0.value))" }.joined(separator: ",") + "}"
        var offset = 0
        for (name, shape, _) in tensors {
            let bytes = shape.reduce(1, *) * 4
            header += ",\(jsonQuote(name)):{\"dtype\":\"F32\",\"shape\":[\(shape.map(String.init).joined(separator: ","))],\"data_offsets\":[\(offset),\(offset + bytes)]}"
            offset += bytes
        }
        header += "}"
        while (8 + header.utf8.count) % 8 != 0 { header += " " }
        try atomicWrite(path) { h in
            var n = UInt64(header.utf8.count).littleEndian
            try h.write(contentsOf: Data(bytes: &n, count: 8))
            try h.write(contentsOf: Data(header.utf8))
            var scratch = [Float]()
            for (_, shape, fill) in tensors {
                let count = shape.reduce(1, *)
                if scratch.count < count { scratch = [Float](repeating: 0, count: count) }
                try scratch.withUnsafeMutableBufferPointer { b in
                    fill(b.baseAddress!)
                    try h.write(contentsOf: Data(bytesNoCopy: b.baseAddress!, count: count * 4, deallocator: .none))
                }
            }
        }
    }

    static func writeJSON(_ object: Any, to path: String) throws {
        let data = try JSONSerialization.data(withJSONObject: object, options: [.prettyPrinted, .sortedKeys])
        try atomicWrite(path) { try $0.write(contentsOf: data + Data("\n".utf8)) }
    }

    /// Writes through `body` into a temporary file beside `path`, then renames it over `path`.
    static func atomicWrite(_ path: String, _ body: (FileHandle) throws -> Void) throws {
        let url = URL(fileURLWithPath: path)
        let tmp = url.deletingLastPathComponent().appendingPathComponent(".\(url.lastPathComponent).tmp-\(UUID().uuidString)").path
        guard FileManager.default.createFile(atPath: tmp, contents: nil) else { throw CausalError.io(path: tmp, reason: "cannot create") }
        do {
            let h = try FileHandle(forWritingTo: URL(fileURLWithPath: tmp))
            do { try body(h); try h.synchronize(); try h.close() } catch { try? h.close(); throw error }
            guard rename(tmp, path) == 0 else { throw CausalError.io(path: path, reason: "cannot rename \(tmp) into place: \(String(cString: strerror(errno)))") }
        } catch {
            try? FileManager.default.removeItem(atPath: tmp)
            if let e = error as? CausalError { throw e }
            throw CausalError.io(path: path, reason: "\(error)")
        }
    }

    static func jsonQuote(_ s: String) -> String {
        let d = try! JSONSerialization.data(withJSONObject: [s], options: [])
        let t = String(decoding: d, as: UTF8.self)
        return String(t.dropFirst().dropLast())
    }

    // MARK: Reading

    /// Reads `config.json` + `model.safetensors` of a Hugging Face LLaMA (F32, F16 or BF16 tensors) into trainer
    /// parameters (GGUF row layout: Q/K rows permuted for adjacent-pair RoPE).
    public static func load(directory: String) throws -> LlamaParameters {
        let (config, tied) = try readConfig(directory + "/config.json")
        let path = directory + "/model.safetensors"
        guard FileManager.default.fileExists(atPath: path) else {
            throw CausalError.io(path: path, reason: FileManager.default.fileExists(atPath: directory + "/model.safetensors.index.json")
                                 ? "sharded checkpoints are not supported" : "no such file")
        }
        let file = try SafetensorsFile(path: path)
        // A checkpoint that ties the head may still carry a copy of lm_head.weight; it is ignored.
        let p = LlamaParameters(config: config, tiedEmbeddings: tied)
        for t in p.tensors {
            let st = try file.tensor(t.name)
            guard st.shape == t.shape else {
                throw CausalError.badTensor(path: path, tensor: t.name, reason: "shape \(st.shape) does not match the expected \(t.shape)")
            }
            guard let dt = st.dtype.weightType else {
                throw CausalError.badTensor(path: path, tensor: t.name, reason: "dtype \(st.dtype.rawValue) is not supported (F32, F16, BF16)")
            }
            let n = t.count
            let tmp = UnsafeMutablePointer<Float>.allocate(capacity: max(n, 1))
            defer { tmp.deallocate() }
            let cols = t.shape.last ?? 1
            dequantizeAll(WeightMatrix(dtype: dt, data: file.data(st), rows: n / max(cols, 1), cols: cols), into: tmp)
            if t.permutedHeads != nil {
                permuteRows(tmp, p.data + t.offset, rows: t.shape[0], cols: t.shape[1], headDim: config.headDim, toHF: false)
            } else {
                (p.data + t.offset).update(from: tmp, count: n)
            }
        }
        return p
    }

    /// LlamaConfig and tie_word_embeddings from a Hugging Face config.json.
    public static func readConfig(_ path: String) throws -> (LlamaConfig, tied: Bool) {
        guard let data = FileManager.default.contents(atPath: path) else { throw CausalError.io(path: path, reason: "cannot read") }
        guard let j = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] else {
            throw CausalError.badFormat(path: path, field: "config", reason: "not a JSON object")
        }
        func int(_ k: String) throws -> Int {
            guard let v = j[k] as? NSNumber else { throw CausalError.badConfig(key: k, reason: j[k] == nil ? "missing from \(path)" : "must be an integer") }
            return v.intValue
        }
        func double(_ k: String, in o: [String: Any]) -> Double? { (o[k] as? NSNumber)?.doubleValue }
        if let m = j["model_type"] as? String, m != "llama" {
            throw CausalError.badConfig(key: "model_type", reason: "'\(m)' is not supported for training (supported: llama)")
        }
        if let s = j["rope_scaling"] as? [String: Any], let t = (s["rope_type"] ?? s["type"]) as? String, t != "default" {
            throw CausalError.badConfig(key: "rope_scaling", reason: "rope type '\(t)' is not supported")
        }
        let heads = try int("num_attention_heads")
        let hidden = try int("hidden_size")
        let theta = double("rope_theta", in: j) ?? (j["rope_parameters"] as? [String: Any]).flatMap { double("rope_theta", in: $0) } ?? 10000
        let cfg = LlamaConfig(
            vocabularySize: try int("vocab_size"), hiddenSize: hidden, intermediateSize: try int("intermediate_size"),
            layerCount: try int("num_hidden_layers"), headCount: heads,
            kvHeadCount: j["num_key_value_heads"] is NSNumber ? try int("num_key_value_heads") : heads,
            headDim: j["head_dim"] is NSNumber ? try int("head_dim") : nil, ropeTheta: theta,
            rmsNormEps: double("rms_norm_eps", in: j) ?? 1e-6,
            contextLength: j["max_position_embeddings"] is NSNumber ? try int("max_position_embeddings") : 2048)
        try cfg.validate(path: path)
        return (cfg, (j["tie_word_embeddings"] as? Bool) ?? false)
    }
}

// MARK: - Optimizer state and resume

/// Where a training run stands: written with each checkpoint, read by `--resume`.
public struct TrainingState: Sendable, Equatable {
    /// Optimizer steps taken.
    public var step: Int
    /// Total optimizer steps of the run (the schedule's length).
    public var totalSteps: Int
    public var seed: UInt64
    /// Other facts about the run (strings), e.g. the base model path.
    public var info: [String: String]

    public init(step: Int, totalSteps: Int, seed: UInt64, info: [String: String] = [:]) {
        self.step = step; self.totalSteps = totalSteps; self.seed = seed; self.info = info
    }
}

extension LlamaCheckpoint {
    /// Writes the whole checkpoint: model, config, optimizer moments, then the state (the commit point).
    public static func save(_ p: LlamaParameters, optimizer: AdamW, state: TrainingState, to directory: String,
                            extraConfig: [String: Any] = [:]) throws {
        try save(p, to: directory, extraConfig: extraConfig)
        try saveOptimizerState(optimizer, state: state, layout: "gguf-rows", to: directory)
    }

    /// Writes `optimizer.safetensors` (the moments, flat in the trainer's `layout`, and the step), then
    /// `trainer_state.json` (the commit point), each atomically.
    static func saveOptimizerState(_ optimizer: AdamW, state: TrainingState, layout: String, to directory: String) throws {
        let m = optimizer.m, v = optimizer.v
        try writeSafetensors([
            ("exp_avg", [m.count], { $0.update(from: m.data, count: m.count) }),
            ("exp_avg_sq", [v.count], { $0.update(from: v.data, count: v.count) }),
        ], metadata: ["step": String(optimizer.step), "layout": layout, "optimizer": "adamw"],
           to: directory + "/optimizer.safetensors")
        var obj: [String: Any] = ["step": state.step, "total_steps": state.totalSteps, "seed": String(state.seed)]
        for (k, v) in state.info { obj[k] = v }
        try writeJSON(obj, to: directory + "/trainer_state.json")
    }

    /// Reads the run state and the optimizer moments of a checkpoint into `optimizer` (whose layout must match).
    public static func loadState(directory: String, into optimizer: AdamW) throws -> TrainingState {
        let sp = directory + "/trainer_state.json"
        guard let data = FileManager.default.contents(atPath: sp),
              let j = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] else {
            throw CausalError.io(path: sp, reason: "cannot read the training state (not a checkpoint directory?)")
        }
        guard let step = (j["step"] as? NSNumber)?.intValue, let total = (j["total_steps"] as? NSNumber)?.intValue else {
            throw CausalError.badFormat(path: sp, field: "step", reason: "missing")
        }
        var info: [String: String] = [:]
        for (k, v) in j where k != "step" && k != "total_steps" && k != "seed" { if let s = v as? String { info[k] = s } }
        let state = TrainingState(step: step, totalSteps: total, seed: UInt64((j["seed"] as? String) ?? "") ?? 0, info: info)
        let op = directory + "/optimizer.safetensors"
        let f = try SafetensorsFile(path: op)
        guard f.metadata["step"] == String(step) else {
            throw CausalError.badFormat(path: op, field: "step", reason: "optimizer state is at step \(f.metadata["step"] ?? "?") but trainer_state.json says \(step): incomplete checkpoint")
        }
        for (name, dst) in [("exp_avg", optimizer.m), ("exp_avg_sq", optimizer.v)] {
            let t = try f.tensor(name)
            guard t.dtype == .f32, t.elementCount == dst.count else {
                throw CausalError.badTensor(path: op, tensor: name, reason: "has \(t.elementCount) \(t.dtype.rawValue) values, expected \(dst.count) F32")
            }
            memcpy(dst.data, f.data(t), dst.count * 4)
        }
        optimizer.step = step
        return state
    }
}
