import Foundation
import CausalKernels

// PEFT's on-disk LoRA adapter (the `peft` package, 0.21.x; `PeftModel.save_pretrained` / `from_pretrained`):
//
//   adapter_config.json        LoraConfig as JSON: "peft_type": "LORA", "r", "lora_alpha", "lora_dropout",
//                              "target_modules", "layers_to_transform", "use_rslora", "bias", "fan_in_fan_out", ...
//   adapter_model.safetensors  base_model.model.model.layers.{l}.self_attn.q_proj.lora_A.weight  (r, in)
//                              base_model.model.model.layers.{l}.self_attn.q_proj.lora_B.weight  (out, r)
//                              (mlp.gate_proj etc. likewise), any of F32 / F16 / BF16
//
// The engine's `LoRAAdapter` keeps B's rows of q/k in its own row order (GGUF's permuted order for adjacent-pair RoPE,
// `RopeStyle.adjacent`); PEFT files hold Hugging Face's order, so reading and writing permute those rows and nothing
// else. Options that change the math and that the engine does not implement (DoRA, fan_in_fan_out, LoRA biases,
// per-module rank/alpha patterns, modules_to_save, embedding adapters, ...) are errors naming the field or tensor,
// never ignored.

extension LoRAAdapter {
    /// PEFT's file names.
    public static let peftConfigFileName = "adapter_config.json"
    public static let peftWeightsFileName = "adapter_model.safetensors"

    /// The tensor name PEFT gives factor A (`isB` false) or B of a slot.
    public static func peftTensorName(layer: Int, target: LoRATarget, isB: Bool) -> String {
        "base_model.model.model.layers.\(layer).\(target.modulePath).lora_\(isB ? "B" : "A").weight"
    }

    /// Reads a PEFT LoRA adapter directory for a decoder of configuration `model`.
    public static func load(directory: String, model: DecoderConfig) throws -> LoRAAdapter {
        let dir = URL(fileURLWithPath: directory)
        let configPath = dir.appendingPathComponent(peftConfigFileName).path
        let weightsPath = dir.appendingPathComponent(peftWeightsFileName).path
        let fm = FileManager.default
        var isDir: ObjCBool = false
        guard fm.fileExists(atPath: directory, isDirectory: &isDir), isDir.boolValue else {
            throw CausalError.io(path: directory, reason: fm.fileExists(atPath: directory)
                                 ? "not a directory: a PEFT adapter is a directory with \(peftConfigFileName) and \(peftWeightsFileName)"
                                 : "no such directory")
        }
        guard fm.fileExists(atPath: configPath) else {
            throw CausalError.io(path: configPath, reason: "no such file: a PEFT adapter directory needs \(peftConfigFileName) and \(peftWeightsFileName)")
        }
        guard fm.fileExists(atPath: weightsPath) else {
            let bin = dir.appendingPathComponent("adapter_model.bin").path
            throw CausalError.io(path: weightsPath, reason: fm.fileExists(atPath: bin)
                                 ? "no such file (adapter_model.bin, PyTorch's pickle format, is not read: save the adapter with safe_serialization=True)"
                                 : "no such file: a PEFT adapter directory needs \(peftWeightsFileName)")
        }
        let config = try readPEFTConfig(configPath, model: model)
        let adapter: LoRAAdapter
        do { adapter = try LoRAAdapter(config: config, model: model) } catch let CausalError.invalidArgument(reason) {
            throw CausalError.badFormat(path: configPath, field: "adapter", reason: reason)
        }

        let file = try SafetensorsFile(path: weightsPath)
        var seen = Set<String>()
        for s in adapter.slots {
            for isB in [false, true] {
                let name = peftTensorName(layer: s.layer, target: s.target, isB: isB)
                guard let t = file.tensorsByName[name] else {
                    throw CausalError.badTensor(path: weightsPath, tensor: name,
                                                reason: "missing (adapter_config.json targets \(s.target.moduleName) in layer \(s.layer))")
                }
                seen.insert(name)
                let shape = isB ? [s.outDim, s.rank] : [s.rank, s.inDim]
                guard t.shape == shape else {
                    throw CausalError.badTensor(path: weightsPath, tensor: name,
                                                reason: "shape \(t.shape) does not match the base model's \(shape) (rank \(s.rank), \(s.target.moduleName) is \(s.outDim)×\(s.inDim))")
                }
                guard let dt = t.dtype.weightType else {
                    throw CausalError.badTensor(path: weightsPath, tensor: name, reason: "dtype \(t.dtype.rawValue) is not supported (F32, F16, BF16)")
                }
                let dst = isB ? adapter.b(s) : adapter.a(s)
                let rows = shape[0], cols = shape[1]
                let m = WeightMatrix(dtype: dt, data: file.data(t), rows: rows, cols: cols)
                if isB, s.target.permutedHeads(model) != nil {
                    let tmp = UnsafeMutablePointer<Float>.allocate(capacity: rows * cols)
                    defer { tmp.deallocate() }
                    dequantizeAll(m, into: tmp)
                    LlamaCheckpoint.permuteRows(tmp, dst, rows: rows, cols: cols, headDim: model.headDim, toHF: false)
                } else {
                    dequantizeAll(m, into: dst)
                }
            }
        }
        if let extra = file.tensors.first(where: { !seen.contains($0.name) }) {
            throw CausalError.badTensor(path: weightsPath, tensor: extra.name, reason: unexpectedTensorReason(extra.name, config: config, model: model))
        }
        for s in adapter.slots {
            for (isB, p, n) in [(false, adapter.a(s), s.rank * s.inDim), (true, adapter.b(s), s.outDim * s.rank)] {
                if let i = (0..<n).first(where: { !p[$0].isFinite }) {
                    throw CausalError.badTensor(path: weightsPath, tensor: peftTensorName(layer: s.layer, target: s.target, isB: isB),
                                                reason: "holds a value that is not a finite number (element \(i))")
                }
            }
        }
        return adapter
    }

    /// Reads a PEFT adapter for `model`'s decoder.
    public static func load(directory: String, model: DecoderModel) throws -> LoRAAdapter {
        try load(directory: directory, model: model.config)
    }

    /// Why a tensor of an adapter file is not one the configuration accounts for.
    private static func unexpectedTensorReason(_ name: String, config: LoRAConfig, model: DecoderConfig) -> String {
        let prefix = "base_model.model.model.layers."
        guard name.hasPrefix(prefix) else {
            return "is not a LoRA factor of a decoder layer's linear module (embedding or head adapters, modules_to_save and trainable tokens are not supported)"
        }
        let rest = name.dropFirst(prefix.count)
        guard let dot = rest.firstIndex(of: "."), let layer = Int(rest[..<dot]) else { return "is not a LoRA factor this engine reads" }
        let tail = String(rest[rest.index(after: dot)...])
        guard let target = LoRATarget.allCases.first(where: { tail == $0.modulePath + ".lora_A.weight" || tail == $0.modulePath + ".lora_B.weight" }) else {
            return "is not a LoRA factor this engine reads (DoRA magnitudes, LoRA biases and other modules are not supported)"
        }
        if layer >= model.layerCount { return "names layer \(layer), but the base model has \(model.layerCount) layers" }
        if !config.targets.contains(target) { return "adapts \(target.moduleName), which adapter_config.json's target_modules does not list" }
        return "adapts layer \(layer), which adapter_config.json's layers_to_transform does not list"
    }

    /// Parses adapter_config.json into a `LoRAConfig`, refusing what the engine does not implement.
    static func readPEFTConfig(_ path: String, model: DecoderConfig) throws -> LoRAConfig {
        let root = try HFJSON.parse(contentsOf: path)
        guard let o = root.objectValue else {
            throw CausalError.badFormat(path: path, field: "JSON", reason: "the top level must be an object, found \(root.typeName)")
        }
        func bad(_ field: String, _ reason: String) -> CausalError { .badFormat(path: path, field: field, reason: reason) }
        func value(_ k: String) -> HFJSON? { o[k].flatMap { $0.isNull ? nil : $0 } }

        guard let type = value("peft_type") else { throw bad("peft_type", "missing (a PEFT adapter_config.json names its method, e.g. \"LORA\")") }
        guard let t = type.stringValue else { throw bad("peft_type", "expected a string, found \(type.typeName)") }
        guard t == "LORA" else { throw bad("peft_type", "'\(t)' is not supported (only LORA adapters are)") }
        if let task = value("task_type") {
            guard let s = task.stringValue, s == "CAUSAL_LM" else {
                throw bad("task_type", "\(task.brief) is not supported (only CAUSAL_LM: a decoder generating text)")
            }
        }
        guard let rv = value("r") else { throw bad("r", "missing") }
        guard let r = rv.intValue, r > 0 else { throw bad("r", "expected a positive integer, found \(rv.brief)") }
        var alpha = 8.0   // LoraConfig's default
        if let a = value("lora_alpha") {
            guard let d = a.doubleValue, d.isFinite, d > 0 else { throw bad("lora_alpha", "expected a positive number, found \(a.brief)") }
            alpha = d
        }
        var dropout = 0.0
        if let d = value("lora_dropout") {
            guard let x = d.doubleValue, x >= 0, x < 1 else { throw bad("lora_dropout", "expected a number in [0, 1), found \(d.brief)") }
            dropout = x
        }
        var rslora = false
        if let v = value("use_rslora") {
            guard let b = v.boolValue else { throw bad("use_rslora", "expected a bool, found \(v.typeName)") }
            rslora = b
        }
        if let b = value("bias") {
            guard b.stringValue == "none" else { throw bad("bias", "\(b.brief) is not supported (only \"none\": LoRA without trained biases)") }
        }
        // Options that change the math: they must be off (false, null, empty).
        let mustBeOff = ["fan_in_fan_out", "use_dora", "lora_bias", "modules_to_save", "rank_pattern", "alpha_pattern",
                         "exclude_modules", "trainable_token_indices", "target_parameters", "layer_replication",
                         "use_qalora", "use_bdlora", "megatron_config", "alora_invocation_tokens", "arrow_config",
                         "kasa_config", "monteclora_config", "velora_config"]
        for k in mustBeOff {
            guard let v = value(k) else { continue }
            let off: Bool
            switch v {
            case .bool(let b): off = !b
            case .array(let a): off = a.isEmpty
            case .object(let m): off = m.isEmpty
            default: off = false
            }
            if !off { throw bad(k, "\(v.brief) is not supported (the engine would ignore it and compute something else)") }
        }

        // target_modules: module names (q_proj, ... or q, ...), or "all-linear" (every linear layer of the blocks).
        guard let tm = value("target_modules") else { throw bad("target_modules", "missing") }
        var targets: [LoRATarget] = []
        if let s = tm.stringValue {
            guard s == "all-linear" else {
                throw bad("target_modules", "the pattern \(tm.brief) is not supported: give a list of module names (\(LoRATarget.allCases.map(\.moduleName).joined(separator: ", "))) or \"all-linear\"")
            }
            targets = LoRATarget.allCases
        } else if let list = tm.arrayValue {
            for v in list {
                guard let name = v.stringValue else { throw bad("target_modules", "expected strings, found \(v.brief)") }
                guard let t = LoRATarget(name: name) ?? LoRATarget.allCases.first(where: { name.hasSuffix("." + $0.modulePath) || name == $0.modulePath }) else {
                    throw bad("target_modules", "'\(name)' is not a module this engine adapts (known: \(LoRATarget.allCases.map(\.moduleName).joined(separator: ", ")))")
                }
                if !targets.contains(t) { targets.append(t) }
            }
        } else {
            throw bad("target_modules", "expected a list of module names, found \(tm.typeName)")
        }
        guard !targets.isEmpty else { throw bad("target_modules", "is empty") }
        targets.sort { LoRATarget.allCases.firstIndex(of: $0)! < LoRATarget.allCases.firstIndex(of: $1)! }

        var layers: [Int]? = nil
        if let lt = value("layers_to_transform") {
            let items = lt.intValue.map { [HFJSON.int($0)] } ?? lt.arrayValue
            guard let items else { throw bad("layers_to_transform", "expected an integer or a list of integers, found \(lt.typeName)") }
            var ls: [Int] = []
            for v in items {
                guard let l = v.intValue else { throw bad("layers_to_transform", "expected integers, found \(v.brief)") }
                guard l >= 0 && l < model.layerCount else {
                    throw bad("layers_to_transform", "layer \(l) is outside the base model's \(model.layerCount) layers")
                }
                if !ls.contains(l) { ls.append(l) }
            }
            layers = ls.sorted()
            if let lp = value("layers_pattern") {
                let names = lp.stringValue.map { [$0] } ?? lp.arrayValue?.compactMap(\.stringValue) ?? []
                guard names.contains("layers") else {
                    throw bad("layers_pattern", "\(lp.brief) does not name the decoder's layer list ('layers')")
                }
            }
        }
        return LoRAConfig(rank: r, alpha: alpha, dropout: dropout, targets: targets, layers: layers, useRSLoRA: rslora)
    }

    /// Writes the adapter as a PEFT directory (created if needed): adapter_model.safetensors (F32, HF row order),
    /// then adapter_config.json, each through a temporary name renamed into place. `baseModel` is recorded as
    /// `base_model_name_or_path`.
    public func write(to directory: String, baseModel: String? = nil) throws {
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        } catch {
            throw CausalError.io(path: directory, reason: "cannot create the directory: \(error.localizedDescription)")
        }
        let dir = URL(fileURLWithPath: directory)
        var entries: [(String, [Int], (UnsafeMutablePointer<Float>) -> Void)] = []
        let D = model.headDim
        for s in slots {
            let a = self.a(s), b = self.b(s)
            entries.append((Self.peftTensorName(layer: s.layer, target: s.target, isB: false), [s.rank, s.inDim],
                            { $0.update(from: a, count: s.rank * s.inDim) }))
            if s.target.permutedHeads(model) != nil {
                entries.append((Self.peftTensorName(layer: s.layer, target: s.target, isB: true), [s.outDim, s.rank],
                                { LlamaCheckpoint.permuteRows(b, $0, rows: s.outDim, cols: s.rank, headDim: D, toHF: true) }))
            } else {
                entries.append((Self.peftTensorName(layer: s.layer, target: s.target, isB: true), [s.outDim, s.rank],
                                { $0.update(from: b, count: s.outDim * s.rank) }))
            }
        }
        try LlamaCheckpoint.writeSafetensors(entries, metadata: ["format": "pt"],
                                             to: dir.appendingPathComponent(Self.peftWeightsFileName).path)
        let alpha: Any = config.alpha == config.alpha.rounded() && abs(config.alpha) < 1e15 ? Int(config.alpha) : config.alpha
        let json: [String: Any] = [
            "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": config.rank, "lora_alpha": alpha,
            "lora_dropout": config.dropout, "target_modules": config.targets.map(\.moduleName), "bias": "none",
            "fan_in_fan_out": false, "use_rslora": config.useRSLoRA, "use_dora": false,
            "layers_to_transform": config.layers.map { $0 as Any } ?? NSNull(),
            "layers_pattern": NSNull(), "base_model_name_or_path": baseModel.map { $0 as Any } ?? NSNull(),
            "inference_mode": true, "init_lora_weights": true, "modules_to_save": NSNull(), "revision": NSNull(),
            "rank_pattern": [String: Any](), "alpha_pattern": [String: Any](),
        ]
        try LlamaCheckpoint.writeJSON(json, to: dir.appendingPathComponent(Self.peftConfigFileName).path)
    }

    /// Whether the factors fit a decoder of `other`'s shape (layers, widths, heads and Q/K row order).
    public func fits(_ other: DecoderConfig) -> Bool {
        let a = model
        return a.layerCount == other.layerCount && a.hiddenSize == other.hiddenSize && a.intermediateSize == other.intermediateSize
            && a.headCount == other.headCount && a.kvHeadCount == other.kvHeadCount && a.headDim == other.headDim
            && a.ropeStyle == other.ropeStyle
    }
}
