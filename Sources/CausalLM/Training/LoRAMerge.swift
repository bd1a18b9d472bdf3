import Foundation
import CausalKernels

// Merging a LoRA adapter into its base model (`causal export --merge`): every adapted weight becomes W + s·B·A, and
// the result is written as a Hugging Face model directory (config.json + model.safetensors, F32) that loads like any
// other model, with transformers or with `causal generate --model OUT`.
//
// A Hugging Face directory base keeps every tensor name and its config.json, tokenizer and generation files (copied);
// only the adapted matrices change (their rows in HF's order: the update's q/k rows are mapped back from the engine's
// order). A GGUF base (plain LLaMA) goes through `LlamaParameters` and `LlamaCheckpoint.save`, as a fine-tuned
// checkpoint does: its directory records the GGUF file as `base_model` in trainer_state.json, which is where
// `ModelBundle` then takes the tokenizer and chat template from.

extension LoRAAdapter {
    /// Adds s·B·A of `slot` to `weight`, a (outDim, inDim) fp32 matrix, rows in the engine's order or, with
    /// `hfRowOrder`, in Hugging Face's (q/k rows of an adjacent-RoPE model mapped). Each element adds its rank terms
    /// in order, then the scaled sum once.
    public func addUpdate(_ s: LoRASlot, into weight: UnsafeMutablePointer<Float>, hfRowOrder: Bool = false) {
        let scale = config.scale
        let a = self.a(s), b = self.b(s)
        let permuted = hfRowOrder && s.target.permutedHeads(model) != nil
        let delta = UnsafeMutablePointer<Float>.allocate(capacity: s.inDim)
        defer { delta.deallocate() }
        for o in 0..<s.outDim {
            delta.update(repeating: 0, count: s.inDim)
            for k in 0..<s.rank {
                let c = b[o * s.rank + k]
                if c == 0 { continue }
                let ak = a + k * s.inDim
                for i in 0..<s.inDim { delta[i] += c * ak[i] }
            }
            let r = permuted ? LlamaCheckpoint.hfRowOrder(ofGGUFRow: o, headDim: model.headDim) : o
            let row = weight + r * s.inDim
            for i in 0..<s.inDim { row[i] += scale * delta[i] }
        }
    }

    /// The slot a Hugging Face weight name (`model.layers.3.self_attn.q_proj.weight`) carries, if any.
    func slot(forHFWeight name: String) -> LoRASlot? {
        let prefix = "model.layers."
        guard name.hasPrefix(prefix), name.hasSuffix(".weight") else { return nil }
        let rest = name.dropFirst(prefix.count).dropLast(".weight".count)
        guard let dot = rest.firstIndex(of: "."), let layer = Int(rest[..<dot]) else { return nil }
        let path = rest[rest.index(after: dot)...]
        guard let t = LoRATarget.allCases.first(where: { $0.modulePath == path }) else { return nil }
        return slot(layer: layer, target: t)
    }

    /// Writes `bundle`'s model with this adapter merged into its weights as a Hugging Face directory at `directory`
    /// (created if needed; files written under temporary names and renamed into place). The bundle must be the base
    /// the adapter was loaded for: a Hugging Face decoder directory (any family), or a GGUF file of a plain LLaMA.
    public func exportMerged(base bundle: ModelBundle, to directory: String) throws {
        guard let decoder = bundle.model as? DecoderModel else {
            throw CausalError.invalidArgument("\(bundle.path): merging a LoRA adapter needs a decoder model (llama, qwen2, qwen3, gemma3)")
        }
        guard fits(decoder.config) else {
            throw CausalError.invalidArgument("the LoRA adapter is shaped for another model than \(bundle.path)")
        }
        let fm = FileManager.default
        let out = URL(fileURLWithPath: directory).standardizedFileURL
        let source = URL(fileURLWithPath: bundle.path).standardizedFileURL
        guard out.path != source.path else {
            throw CausalError.invalidArgument("\(directory): the output directory is the base model's own directory; choose another")
        }
        do { try fm.createDirectory(at: out, withIntermediateDirectories: true) } catch {
            throw CausalError.io(path: directory, reason: "cannot create the directory: \(error.localizedDescription)")
        }
        if bundle.gguf != nil {
            try exportMergedLlama(decoder, bundle: bundle, to: out.path)
        } else {
            try exportMergedDirectory(source: source, to: out)
        }
    }

    /// A Hugging Face directory base: every tensor as F32, adapted matrices merged; the other files copied.
    private func exportMergedDirectory(source: URL, to out: URL) throws {
        let checkpoint = try SafetensorsCheckpoint(path: source.path)
        var covered = Set<Int>()
        var entries: [(String, [Int], (UnsafeMutablePointer<Float>) -> Void)] = []
        for name in checkpoint.tensorNames {
            let (file, t) = try checkpoint.tensor(name)
            guard let dt = t.dtype.weightType else {
                throw CausalError.badTensor(path: file.path, tensor: name, reason: "dtype \(t.dtype.rawValue) cannot be merged (F32, F16, BF16)")
            }
            let count = t.elementCount
            let cols = max(t.shape.last ?? 1, 1)
            let data = file.data(t)
            let s = slot(forHFWeight: name)
            if let s {
                guard t.shape == [s.outDim, s.inDim] else {
                    throw CausalError.badTensor(path: file.path, tensor: name, reason: "shape \(t.shape) does not match the adapter's \([s.outDim, s.inDim])")
                }
                covered.insert(slots.firstIndex { $0.layer == s.layer && $0.target == s.target }!)
            }
            entries.append((name, t.shape, { dst in
                dequantizeAll(WeightMatrix(dtype: dt, data: data, rows: count / cols, cols: cols), into: dst)
                if let s { self.addUpdate(s, into: dst, hfRowOrder: true) }
            }))
        }
        if let missing = slots.indices.first(where: { !covered.contains($0) }) {
            let s = slots[missing]
            throw CausalError.badTensor(path: checkpoint.path, tensor: "model.layers.\(s.layer).\(s.target.modulePath).weight",
                                        reason: "missing: the adapter adapts it, so the merge needs it")
        }
        try LlamaCheckpoint.writeSafetensors(entries, metadata: ["format": "pt"], to: out.appendingPathComponent("model.safetensors").path)
        // Everything else the base directory holds (config, tokenizer, generation settings), byte for byte.
        let fm = FileManager.default
        for item in (try? fm.contentsOfDirectory(atPath: source.path)) ?? [] {
            if item.hasPrefix(".") || item == "model.safetensors.index.json" { continue }
            // Weights in any format (the merged model.safetensors replaces them) and test data are not copied.
            if [".safetensors", ".bin", ".pt", ".pth", ".gguf", ".npy", ".npz", ".h5", ".msgpack"].contains(where: item.hasSuffix) { continue }
            if item == "trainer_state.json" || item == "optimizer.safetensors" || item == "metrics.jsonl" { continue }
            let src = source.appendingPathComponent(item)
            var isDir: ObjCBool = false
            guard fm.fileExists(atPath: src.path, isDirectory: &isDir), !isDir.boolValue else { continue }
            guard let bytes = fm.contents(atPath: src.path) else { throw CausalError.io(path: src.path, reason: "cannot read") }
            try LlamaCheckpoint.atomicWrite(out.appendingPathComponent(item).path) { try $0.write(contentsOf: bytes) }
        }
        // A `causal train` checkpoint base takes its tokenizer from its own base model: keep that link.
        if let tokenizerSource = try LlamaCheckpoint.tokenizerSource(ofCheckpoint: source.path) {
            try LlamaCheckpoint.writeJSON(["base_model": tokenizerSource], to: out.appendingPathComponent("trainer_state.json").path)
        }
    }

    /// A GGUF base (plain LLaMA): its weights dequantized into `LlamaParameters`, merged, saved as a checkpoint whose
    /// trainer_state.json names the GGUF file for the tokenizer.
    private func exportMergedLlama(_ decoder: DecoderModel, bundle: ModelBundle, to out: String) throws {
        guard decoder.config.isPlainLlama else {
            throw CausalError.invalidArgument("\(bundle.path): merging into a GGUF base supports plain LLaMA models (SmolLM2, Llama); this is a \(decoder.config.architecture) configuration. Use the model's Hugging Face directory as --model")
        }
        let p = LlamaParameters(model: decoder)
        for s in slots {
            let name = "model.layers.\(s.layer).\(s.target.modulePath).weight"
            guard let t = p.tensor(name) else {
                throw CausalError.invalidArgument("\(bundle.path): the base has no \(name) to merge into")
            }
            addUpdate(s, into: p.values(t).baseAddress!)   // LlamaParameters keep the engine's (GGUF) row order
        }
        var extra: [String: Any] = [:]
        if let t = bundle.textTokenizer {
            if let b = t.bosTokenID { extra["bos_token_id"] = b }
            if let e = t.eosTokenID { extra["eos_token_id"] = e }
            if let pad = t.padTokenID { extra["pad_token_id"] = pad }
        }
        try LlamaCheckpoint.save(p, to: out, extraConfig: extra)
        try LlamaCheckpoint.writeJSON(["base_model": URL(fileURLWithPath: bundle.path).standardizedFileURL.path],
                                      to: out + "/trainer_state.json")
    }
}

extension LoRAAdapter {
    /// The slot a GGUF tensor name (`blk.3.attn_q.weight`) carries, if any.
    func slot(forGGUFTensor name: String) -> LoRASlot? {
        let suffixes: [(String, LoRATarget)] = [("attn_q", .q), ("attn_k", .k), ("attn_v", .v), ("attn_output", .o),
                                                 ("ffn_gate", .gate), ("ffn_up", .up), ("ffn_down", .down)]
        guard name.hasPrefix("blk."), name.hasSuffix(".weight") else { return nil }
        let rest = name.dropFirst(4).dropLast(".weight".count)
        guard let dot = rest.firstIndex(of: "."), let layer = Int(rest[..<dot]) else { return nil }
        let module = rest[rest.index(after: dot)...]
        guard let t = suffixes.first(where: { $0.0 == module })?.1 else { return nil }
        return slot(layer: layer, target: t)
    }

    /// Writes `bundle`'s GGUF file with this adapter merged: the same metadata (copied byte for byte) and tensors, each
    /// adapted matrix replaced by its merged weights W + s·B·A as F32 (in the file's own row order); every other tensor
    /// keeps its bytes and type. Written to a temporary name beside `path`, then renamed into place.
    public func exportMergedGGUF(base bundle: ModelBundle, to path: String) throws {
        guard let gguf = bundle.gguf, let decoder = bundle.model as? DecoderModel else {
            throw CausalError.invalidArgument("\(bundle.path): a merged GGUF is written from a GGUF base (for a Hugging Face directory, export the merged directory)")
        }
        guard fits(decoder.config) else {
            throw CausalError.invalidArgument("the LoRA adapter is shaped for another model than \(bundle.path)")
        }
        guard URL(fileURLWithPath: path).standardizedFileURL.path != URL(fileURLWithPath: gguf.path).standardizedFileURL.path else {
            throw CausalError.invalidArgument("\(path): the output is the base model's own file; choose another")
        }
        let base = gguf.file.base
        // The metadata section ends where the tensor infos begin: find it from the data offset (the infos' size is
        // known; only the alignment padding before the data is not), checking the first tensor's name is there.
        func infoBytes(_ t: GGUFTensor) -> Int { 8 + t.name.utf8.count + 4 + 8 * t.dims.count + 4 + 8 }
        let infos = gguf.tensors.reduce(0) { $0 + infoBytes($1) }
        var metadataEnd: Int? = nil
        if let first = gguf.tensors.first {
            for pad in 0..<gguf.alignment {
                let at = gguf.dataOffset - pad - infos
                guard at >= 24 else { break }
                let n = Int(UInt64(littleEndian: (base + at).loadUnaligned(as: UInt64.self)))
                if n == first.name.utf8.count,
                   Array(UnsafeRawBufferPointer(start: base + at + 8, count: n)) == Array(first.name.utf8) {
                    metadataEnd = at
                    break
                }
            }
        }
        guard let metadataEnd else {
            throw CausalError.badFormat(path: gguf.path, field: "tensor infos", reason: "cannot locate the tensor infos to copy the metadata")
        }
        var covered = Set<Int>()
        var plan: [(t: GGUFTensor, slot: LoRASlot?, bytes: Int)] = []
        for t in gguf.tensors {
            let s = slot(forGGUFTensor: t.name)
            if let s {
                guard t.dims == [s.inDim, s.outDim] else {
                    throw CausalError.badTensor(path: gguf.path, tensor: t.name, reason: "dims \(t.dims) do not match the adapter's \([s.inDim, s.outDim])")
                }
                covered.insert(slots.firstIndex { $0.layer == s.layer && $0.target == s.target }!)
            }
            plan.append((t, s, s.map { $0.outDim * $0.inDim * 4 } ?? t.byteCount))
        }
        if let missing = slots.indices.first(where: { !covered.contains($0) }) {
            throw CausalError.invalidArgument("\(gguf.path): no tensor for \(slots[missing].target.moduleName) of layer \(slots[missing].layer) to merge into")
        }
        let A = gguf.alignment
        func padded(_ n: Int) -> Int { (n + A - 1) / A * A }
        try LlamaCheckpoint.atomicWrite(path) { h in
            var header = Data(bytes: base, count: metadataEnd)   // magic, version, counts, every metadata pair
            func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { header.append(contentsOf: $0) } }
            func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { header.append(contentsOf: $0) } }
            var offset = 0
            for (t, s, bytes) in plan {
                u64(UInt64(t.name.utf8.count)); header.append(contentsOf: Array(t.name.utf8))
                u32(UInt32(t.dims.count)); t.dims.forEach { u64(UInt64($0)) }
                u32(s == nil ? t.type.id : 0)   // merged matrices are F32 (ggml type 0)
                u64(UInt64(offset))
                offset += padded(bytes)
            }
            header.append(contentsOf: [UInt8](repeating: 0, count: padded(header.count) - header.count))
            try h.write(contentsOf: header)
            for (t, s, bytes) in plan {
                if let s {
                    let w = UnsafeMutablePointer<Float>.allocate(capacity: s.outDim * s.inDim)
                    defer { w.deallocate() }
                    guard let dt = DType(rawValue: Int32(t.type.id)) else {
                        throw CausalError.badTensor(path: gguf.path, tensor: t.name, reason: "type \(t.type.name) cannot be dequantized")
                    }
                    dequantizeAll(WeightMatrix(dtype: dt, data: gguf.data(t), rows: s.outDim, cols: s.inDim), into: w)
                    addUpdate(s, into: w)
                    try h.write(contentsOf: Data(bytesNoCopy: w, count: bytes, deallocator: .none))
                } else {
                    try h.write(contentsOf: Data(bytesNoCopy: UnsafeMutableRawPointer(mutating: gguf.data(t)), count: bytes, deallocator: .none))
                }
                if padded(bytes) > bytes { try h.write(contentsOf: Data(count: padded(bytes) - bytes)) }
            }
        }
    }
}
