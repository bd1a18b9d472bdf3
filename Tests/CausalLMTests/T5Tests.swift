import Foundation
import XCTest
import CausalKernels
import CausalLM

/// The tiny random T5 of Tests/Fixtures/tiny/t5 (2+2 layers, d_model 64, 4 heads, relu FF, tied head,
/// vocabulary 1000) against Hugging Face's T5ForConditionalGeneration, through the same `Generator` as decoder-only
/// models.
final class T5Tests: XCTestCase {
    static let directory = Fixtures.url("tiny/t5").path
    static let model: T5Model = { try! T5Model(directory: directory) }()

    struct Refs {
        let rows: [[Int]]                 // encoder inputs
        let decoderInput: [[Int]]         // [0, 7, 8, 9] each
        let logits: [[[Float]]]           // per row: (4, V)
        let greedySingle: [[Int]]
        let greedyPaddedBatch: [[Int]]
        let sftLabels: [[Int]]
        let sftLoss: Double
    }

    static func refs() throws -> Refs {
        let r = try XCTUnwrap(Fixtures.json("tiny/t5/refs.json") as? [String: Any])
        let sft = try XCTUnwrap(r["sft"] as? [String: Any])
        return Refs(rows: try XCTUnwrap(r["encoder_rows"] as? [[Int]]),
                    decoderInput: try XCTUnwrap(r["decoder_input_ids"] as? [[Int]]),
                    logits: try XCTUnwrap(r["logits_single"] as? [[[Double]]]).map { $0.map { $0.map(Float.init) } },
                    greedySingle: try XCTUnwrap(r["greedy_single"] as? [[Int]]),
                    greedyPaddedBatch: try XCTUnwrap(r["greedy_padded_batch"] as? [[Int]]),
                    sftLabels: try XCTUnwrap(sft["labels"] as? [[Int]]),
                    sftLoss: try XCTUnwrap(sft["loss"] as? Double))
    }

    /// A stand-in tokenizer for the tiny model's 1000 ids (the fixture has no tokenizer): "<pad>", "</s>", then
    /// " w2", " w3", ... spelled byte-level. Only used to turn generated ids into text.
    static let tokenizer: ByteLevelBPETokenizer = {
        let tokens = ["<pad>", "</s>"] + (2..<1000).map { "Ġw\($0)" }
        return try! ByteLevelBPETokenizer(tokens: tokens, tokenTypes: [3, 3] + Array(repeating: 1, count: 998), merges: [],
                                          preTokenizer: "default", bosTokenID: nil, eosTokenID: 1, padTokenID: 0,
                                          unknownTokenID: nil, addBOS: false)
    }()

    static func generator(_ model: T5Model = model) -> Generator {
        Generator(model: model, tokenizer: tokenizer, endTokenIDs: model.endTokenIDs)
    }

    func testConfig() throws {
        let cfg = try T5Config(path: Self.directory + "/config.json")
        XCTAssertEqual(cfg, T5Config(vocabularySize: 1000, modelDim: 64, headDim: 16, feedForwardDim: 128, encoderLayerCount: 2,
                                     decoderLayerCount: 2, headCount: 4, relativeBuckets: 32, relativeMaxDistance: 128,
                                     layerNormEps: 1e-6, feedForward: .relu, tiedEmbeddings: true, scaleDecoderOutputs: true,
                                     decoderStartTokenID: 0, eosTokenIDs: [1], padTokenID: 0, contextLength: 512))
    }

    /// modeling_t5's buckets, worked by hand: 32 buckets, max distance 128.
    func testRelativePositionBuckets() throws {
        let cfg = Self.model.config
        // Bidirectional (encoder): 16 per direction, exact below 8, keys after the query in 16...31.
        XCTAssertEqual([0, -1, -7, 1, 7].map { cfg.relativeBucket($0, bidirectional: true) }, [0, 1, 7, 17, 23])
        // 8 + floor(log(d/8) / log(16) * 8): d = 12 → 8 + 1 = 9, d = 100 → 8 + 7 = 15, d = 1000 → capped at 15.
        XCTAssertEqual([-12, -100, -1000, 12, 1000].map { cfg.relativeBucket($0, bidirectional: true) }, [9, 15, 15, 25, 31])
        // Causal (decoder): only the past, exact below 16; the future is bucket 0; d = 40 → 16 + floor(log(2.5) / log(8) * 16) = 23.
        XCTAssertEqual([0, 3, -3, -15, -16, -40, -127, -500].map { cfg.relativeBucket($0, bidirectional: false) },
                       [0, 0, 3, 15, 16, 23, 31, 31])
    }

    /// Every relative position -200...200, both directions, for 32 buckets / 128 and 8 / 12, equals transformers'
    /// T5Attention._relative_position_bucket (Tests/Fixtures/tiny/t5/relative_buckets.json, gen/make_tiny.py).
    func testRelativePositionBucketsMatchTransformers() throws {
        let file = try XCTUnwrap(Fixtures.json("tiny/t5/relative_buckets.json") as? [String: Any])
        let tables = try XCTUnwrap(file["tables"] as? [[String: Any]])
        XCTAssertEqual(tables.count, 4)
        for t in tables {
            var cfg = Self.model.config
            cfg.relativeBuckets = try XCTUnwrap(t["num_buckets"] as? Int)
            cfg.relativeMaxDistance = try XCTUnwrap(t["max_distance"] as? Int)
            let bidirectional = try XCTUnwrap(t["bidirectional"] as? Bool), first = try XCTUnwrap(t["first_relative_position"] as? Int)
            let want = try XCTUnwrap(t["buckets"] as? [Int])
            XCTAssertEqual(want.indices.map { cfg.relativeBucket(first + $0, bidirectional: bidirectional) }, want,
                           "\(cfg.relativeBuckets) buckets, max distance \(cfg.relativeMaxDistance), bidirectional \(bidirectional)")
        }
    }

    /// Logits of the decoder prompt [0, 7, 8, 9] for each encoder row, against HF and against the same model evaluated
    /// in float64 by transformers itself (Tests/Fixtures/tiny/t5/logits_float64.json, Tests/Fixtures/gen/make_tiny.py:
    /// T5ForConditionalGeneration loaded in float64, T5LayerNorm's variance in float64). The tiny model's logits reach ±250 (initializer_factor
    /// 8), where one fp32 ulp is 1.5e-5 and HF's own fp32 logits are up to 1.2e-4 from the float64 values; so the 1e-4
    /// bound is checked against float64, and against HF beyond HF's own distance from float64 at each entry.
    func testLogitsMatchHF() throws {
        let refs = try Self.refs()
        let exact = try XCTUnwrap(Fixtures.json("tiny/t5/logits_float64.json") as? [String: Any])
        let f64 = try XCTUnwrap(exact["logits_single"] as? [[[Double]]])
        let m = Self.model
        let V = m.vocabularySize
        var worstHF: Float = 0, worst64 = 0.0, worstHF64 = 0.0
        for (i, row) in refs.rows.enumerated() {
            let cache = try m.makeCaches(encoderInputs: [row])[0]
            let logits = try m.forward([SequenceChunk(cache: cache, tokens: refs.decoderInput[i], logits: .all)])[0]
            XCTAssertEqual(logits.count, refs.decoderInput[i].count * V)
            var dHF: Float = 0, d64 = 0.0, hf64 = 0.0, excess = 0.0, at = (0, 0)
            for t in refs.logits[i].indices {
                for v in 0..<V {
                    let ours = logits[t * V + v], hf = refs.logits[i][t][v], x = f64[i][t][v]
                    if abs(ours - hf) > dHF { dHF = abs(ours - hf); at = (t, v) }
                    d64 = max(d64, abs(Double(ours) - x))
                    hf64 = max(hf64, abs(Double(hf) - x))
                    excess = max(excess, Double(abs(ours - hf)) - abs(Double(hf) - x))
                }
            }
            print("tiny T5 row \(i) (\(row.count) encoder tokens): max |diff| to HF \(dHF) at position \(at.0), id \(at.1) " +
                  "(ours \(logits[at.0 * V + at.1]), HF \(refs.logits[i][at.0][at.1]), float64 \(f64[i][at.0][at.1])); " +
                  "ours to float64 \(d64), HF to float64 \(hf64)")
            XCTAssertLessThanOrEqual(d64, 1e-4, "row \(i): distance to the float64 evaluation")
            XCTAssertLessThanOrEqual(excess, 1e-4, "row \(i): distance to HF beyond HF's own rounding")
            worstHF = max(worstHF, dHF); worst64 = max(worst64, d64); worstHF64 = max(worstHF64, hf64)
            // One token at a time through the cache gives the same bits as the whole decoder prompt.
            let stepCache = try m.makeCaches(encoderInputs: [row])[0]
            for (t, id) in refs.decoderInput[i].enumerated() {
                let step = try m.forward([SequenceChunk(cache: stepCache, tokens: [id], logits: .last)])[0]
                XCTAssertEqual(step.map(\.bitPattern), logits[(t * V)..<((t + 1) * V)].map(\.bitPattern), "row \(i) position \(t)")
            }
        }
        print("tiny T5 logits: max |diff| to HF \(worstHF), to float64 \(worst64) (HF to float64 \(worstHF64))")
    }

    /// HF's `generate` settings in make_tiny.py: greedy, 16 new tokens, min_new_tokens 16 (generation_config.json adds
    /// nothing else: decoder start 0, EOS 1, pad 0).
    static let hfGreedy = GenerateParameters(maxNewTokens: 16, minNewTokens: 16)

    /// HF's greedy output for each row alone.
    func testGreedyMatchesHFAndReturnsOnlyDecoderTokens() throws {
        let refs = try Self.refs()
        let g = Self.generator()
        let untokenized = Generator(model: Self.model, tokenizer: nil, endTokenIDs: Self.model.endTokenIDs)
        for (i, row) in refs.rows.enumerated() {
            let r = try g.generate([SequenceRequest(encoderInput: row, parameters: Self.hfGreedy)])[0]
            XCTAssertEqual(r.tokens, refs.greedySingle[i], "row \(i)")
            XCTAssertEqual(r.finishReason, .length)
            XCTAssertEqual(r.promptTokens, row.count + 1, "encoder input + the decoder start id")
            XCTAssertEqual(r.text, refs.greedySingle[i].map { " w\($0)" }.joined(), "only the decoder's new tokens")
            // An explicit decoder prompt [start] is the same request.
            let explicit = try g.generate([SequenceRequest(encoderInput: row, prompt: [0], parameters: Self.hfGreedy)])[0]
            XCTAssertEqual(explicit, r)
            // EOS is never the argmax in these 16 steps, so without min_new_tokens the output is the same.
            XCTAssertEqual(try g.generate([SequenceRequest(encoderInput: row, parameters: GenerateParameters(maxNewTokens: 16))])[0], r)
            // Without a tokenizer (the library's T5 path today): the same ids, no text.
            let bare = try untokenized.generate([SequenceRequest(encoderInput: row, parameters: Self.hfGreedy)])[0]
            XCTAssertEqual(bare.tokens, r.tokens)
            XCTAssertEqual(bare.text, "")
        }
        // An end id stops a sequence like EOS does: the id is in the tokens, not in the text, and the reason is .stop.
        let end = refs.greedySingle[1][3]   // row 1 goes 639, 313, 639, 705, ...
        let stopper = Generator(model: Self.model, tokenizer: Self.tokenizer, endTokenIDs: [end])
        let s = try stopper.generate([SequenceRequest(encoderInput: refs.rows[1], parameters: GenerateParameters(maxNewTokens: 16))])[0]
        XCTAssertEqual(s.tokens, Array(refs.greedySingle[1].prefix(4)))
        XCTAssertEqual(s.finishReason, .stop)
        XCTAssertEqual(s.text, refs.greedySingle[1].prefix(3).map { " w\($0)" }.joined())
    }

    /// HF's right-padded batch (id 0, attention mask), unpadded at the edge and run as one ragged batch, gives HF's
    /// batch output, which equals each row alone.
    func testGreedyFromPaddedBatch() throws {
        let refs = try Self.refs()
        XCTAssertEqual(refs.greedyPaddedBatch, refs.greedySingle)
        let padded = PaddedBatch.padding(refs.rows, side: .right, padID: 0)
        XCTAssertEqual(padded.inputIDs[1], [11, 12, 13, 0, 0, 0, 0])
        let inputs = try PaddedBatch(inputIDs: padded.inputIDs, attentionMask: padded.attentionMask).unpadded(vocabularySize: 1000)
        XCTAssertEqual(inputs, refs.rows)
        let results = try Self.generator().generate(inputs.map { SequenceRequest(encoderInput: $0, parameters: Self.hfGreedy) })
        XCTAssertEqual(results.map(\.tokens), refs.greedyPaddedBatch)
    }

    /// Per-step logits (as bits) and tokens of every request, through the public generation API.
    static func trace(_ g: Generator, _ requests: [SequenceRequest], chunk: Int?) throws -> [BatchInvarianceTests.Trace] {
        var traces = [BatchInvarianceTests.Trace](repeating: .init(), count: requests.count)
        var observer = GenerationObserver()
        observer.onLogits = { i, row in traces[i].steps.append(row.map(\.bitPattern)) }
        let results = try g.generate(requests, chunkSize: chunk, observer: observer)
        for (i, r) in results.enumerated() { traces[i].tokens = r.tokens }
        return traces
    }

    func testBatchedEqualsSingleBitForBit() throws {
        let refs = try Self.refs()
        var rng = SequenceRNG(seed: 5)
        // The fixture rows plus random inputs of 1...40 tokens; decoder prompts of 1...6 tokens; greedy and sampling.
        var inputs = refs.rows
        for _ in 0..<9 { inputs.append((0..<(1 + Int(rng.next() % 40))).map { _ in 2 + Int(rng.next() % 998) }) }
        let prompts = inputs.indices.map { i in [0] + (0..<(i % 6)).map { _ in 2 + Int(rng.next() % 998) } }
        let params = inputs.indices.map { i in
            GenerateParameters(maxNewTokens: 3 + i % 7, temperature: i % 3 == 0 ? 0 : 0.9, topK: i % 2 == 0 ? 0 : 20,
                               topP: 0.95, seed: UInt64(100 + i), stopAtEOS: i % 4 != 1)
        }
        func request(_ i: Int) -> SequenceRequest { SequenceRequest(encoderInput: inputs[i], prompt: prompts[i], parameters: params[i]) }
        let g = Self.generator()
        let alone = try inputs.indices.map { try Self.trace(g, [request($0)], chunk: nil)[0] }
        for t in alone { XCTAssertFalse(t.steps.isEmpty) }
        // A model on one thread, running the encoder in steps of at most 5 rows, computes the very same bits.
        let small = try T5Model(directory: Self.directory, pool: ThreadPool(threads: 1))
        small.maxEncoderRowsPerStep = 5
        let oneThread = Self.generator(small)
        var compared = 0
        for B in [1, 2, 5, 12] {
            for chunk in [1, 3, nil] as [Int?] {
                let order = Array(inputs.indices.shuffled(using: &rng).prefix(B))
                for gen in [g, oneThread] {
                    let traces = try Self.trace(gen, order.map(request), chunk: chunk)
                    for (k, i) in order.enumerated() {
                        XCTAssertEqual(traces[k].tokens, alone[i].tokens, "input \(i), batch \(B), chunk \(String(describing: chunk))")
                        XCTAssertEqual(traces[k].steps.count, alone[i].steps.count)
                        for (s, (a, b)) in zip(traces[k].steps, alone[i].steps).enumerated() where a != b {
                            XCTFail("input \(i) step \(s): logits differ in bits (batch \(B), chunk \(String(describing: chunk)))")
                            break
                        }
                        compared += traces[k].steps.count
                    }
                }
            }
        }
        // The same input twice in one batch, and the encoder's output alone vs in a batch.
        let twice = try Self.trace(g, [request(3), request(3)], chunk: nil)
        XCTAssertEqual(twice[0], alone[3]); XCTAssertEqual(twice[1], alone[3])
        let encoded = try Self.model.encode(inputs)
        for i in inputs.indices { XCTAssertEqual(try Self.model.encode([inputs[i]])[0].map(\.bitPattern), encoded[i].map(\.bitPattern)) }
        print("T5 batch invariance: \(compared) logit rows compared bit for bit")
    }

    func testStreamGivesTheSameResults() async throws {
        let refs = try Self.refs()
        let g = Self.generator()
        let requests = refs.rows.map { SequenceRequest(encoderInput: $0, parameters: GenerateParameters(maxNewTokens: 16)) }
        let (events, _) = g.stream(requests)
        var results = [GenerationResult?](repeating: nil, count: requests.count)
        var tokens = [[Int]](repeating: [], count: requests.count)
        for await e in events {
            switch e {
            case let .token(i, id): tokens[i].append(id)
            case let .finished(i, r, _): results[i] = r
            case let .failed(m): XCTFail(m)
            case .text: break
            case .logprob: XCTFail("a logprob event without logprobs asked for")
            }
        }
        XCTAssertEqual(results.compactMap { $0?.tokens }, refs.greedySingle)
        XCTAssertEqual(tokens, refs.greedySingle)
    }

    func testSFTLossOnPairsMatchesHF() throws {
        let refs = try Self.refs()
        let m = Self.model
        XCTAssertEqual(m.decoderInput(forLabels: [7, 8, 9, 1]), [0, 7, 8, 9])
        XCTAssertEqual(m.decoderInput(forLabels: [7, -100, 9, 1]), [0, 7, 0, 9])
        let pairs = zip(refs.rows, refs.sftLabels).map { Seq2SeqExample(input: $0, labels: $1) }
        let (loss, scored) = try m.loss(pairs)
        let rel = abs(loss - refs.sftLoss) / abs(refs.sftLoss)
        print("tiny T5 SFT loss: \(loss), HF \(refs.sftLoss), relative difference \(rel)")
        XCTAssertEqual(scored, 12)
        XCTAssertLessThanOrEqual(rel, 1e-6, "docs/training.md reports 1.8e-7")
        // -100 labels are not scored; the loss is the mean over the scored ones.
        let one = try m.loss([pairs[0]]).loss, masked = try m.loss([Seq2SeqExample(input: refs.rows[0], labels: [7, 8, -100, -100])])
        XCTAssertEqual(try m.loss([Seq2SeqExample(input: refs.rows[0], labels: [7, 8, 9, 1])]).loss, one)
        XCTAssertEqual(masked.scoredTokens, 2)
        XCTAssertNotEqual(masked.loss, one)
        XCTAssertThrowsError(try m.loss([Seq2SeqExample(input: [], labels: [1])]))
        XCTAssertThrowsError(try m.loss([Seq2SeqExample(input: [5], labels: [1000])])) { e in
            XCTAssertEqual(e as? CausalError, .badTokenID(id: 1000, vocabularySize: 1000))
        }
    }

    func testRequestErrors() throws {
        let g = Self.generator()
        let p = GenerateParameters(maxNewTokens: 4)
        XCTAssertThrowsError(try g.generate([SequenceRequest(prompt: [0], parameters: p)])) { e in
            XCTAssertTrue("\(e)".contains("request 0: an encoder-decoder model needs an encoder input"), "\(e)")
        }
        XCTAssertThrowsError(try g.generate([SequenceRequest(encoderInput: [5], parameters: p), SequenceRequest(encoderInput: [], parameters: p)])) { e in
            XCTAssertTrue("\(e)".contains("request 1: the encoder input has no tokens"), "\(e)")
        }
        XCTAssertThrowsError(try g.generate([SequenceRequest(encoderInput: [5, 1000], parameters: p)])) { e in
            XCTAssertEqual(e as? CausalError, .badTokenID(id: 1000, vocabularySize: 1000))
        }
        // A cache without encoder output cannot drive the decoder.
        XCTAssertThrowsError(try Self.model.forward([SequenceChunk(cache: Self.model.makeCache(capacity: 8), tokens: [0])])) { e in
            XCTAssertTrue("\(e)".contains("must hold its encoder output"), "\(e)")
        }
        // A decoder-only model takes no encoder input.
        let path = try TinyModel.write(dtype: .f32)
        defer { try? FileManager.default.removeItem(atPath: path) }
        XCTAssertThrowsError(try ModelBundle(path: path).makeGenerator().generate([SequenceRequest(encoderInput: [5], parameters: p)])) { e in
            XCTAssertTrue("\(e)".contains("request 0: the model has no encoder"), "\(e)")
        }
    }

    // MARK: Bad checkpoints and configs

    /// A copy of the tiny T5 directory in a temp dir, with its config edited and tensors dropped or reshaped.
    func brokenCopy(config edit: ((inout [String: Any]) -> Void)? = nil, dropping: [String] = [],
                    reshaping: [String: [Int]] = [:]) throws -> URL {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("causal-t5-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(at: dir) }
        var cfg = try XCTUnwrap(Fixtures.json("tiny/t5/config.json") as? [String: Any])
        edit?(&cfg)
        try JSONSerialization.data(withJSONObject: cfg).write(to: dir.appendingPathComponent("config.json"))
        let src = try SafetensorsFile(path: Self.directory + "/model.safetensors")
        let tensors = src.tensors.filter { !dropping.contains($0.name) }.map { t in
            SafetensorsBuilder.Tensor(name: t.name, dtype: t.dtype.rawValue, shape: reshaping[t.name] ?? t.shape,
                                      data: Array(UnsafeRawBufferPointer(start: src.data(t), count: t.byteCount)))
        }
        try SafetensorsBuilder.write(SafetensorsBuilder.file(tensors), to: dir.appendingPathComponent("model.safetensors"))
        return dir
    }

    func loadError(_ dir: URL) -> CausalError? {
        do { _ = try T5Model(directory: dir.path) } catch let e as CausalError { return e } catch { XCTFail("\(error)") }
        XCTFail("loading succeeded")
        return nil
    }

    func testRebuiltCheckpointLoads() throws {
        let refs = try Self.refs()
        let m = try T5Model(directory: brokenCopy().path)
        XCTAssertEqual(try m.encode(refs.rows), try Self.model.encode(refs.rows))
    }

    func testMissingTensorIsNamed() throws {
        let name = "decoder.block.1.layer.1.EncDecAttention.v.weight"
        let dir = try brokenCopy(dropping: [name])
        let e = loadError(dir)
        XCTAssertEqual(e, .badTensor(path: dir.appendingPathComponent("model.safetensors").path, tensor: name, reason: "missing from the checkpoint"))
        print("missing tensor: \(e.map { "\($0)" } ?? "")")
        // Untied head: lm_head.weight is required.
        let untied = try brokenCopy(config: { $0["tie_word_embeddings"] = false })
        guard case .badTensor(_, "lm_head.weight", "missing from the checkpoint")? = loadError(untied) else { return XCTFail() }
        // The decoder's relative-position table.
        let bias = "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
        guard case .badTensor(_, bias, _)? = loadError(try brokenCopy(dropping: [bias])) else { return XCTFail() }
    }

    func testWrongShapeIsNamed() throws {
        // A tensor whose shape disagrees with the config.
        let name = "encoder.block.0.layer.1.DenseReluDense.wi.weight"
        let dir = try brokenCopy(reshaping: [name: [64, 128]])
        guard case let .badTensor(path, tensor, reason)? = loadError(dir) else { return XCTFail() }
        XCTAssertEqual(path, dir.appendingPathComponent("model.safetensors").path)
        XCTAssertEqual(tensor, name)
        XCTAssertTrue(reason.contains("[64, 128] does not match the expected [128, 64]"), reason)
        // A config that disagrees with the tensors: 8 heads of 16 → q is (128, 64), the file has (64, 64).
        let heads = try brokenCopy(config: { $0["num_heads"] = 8 })
        guard case let .badTensor(_, t2, r2)? = loadError(heads) else { return XCTFail() }
        XCTAssertEqual(t2, "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight")
        XCTAssertTrue(r2.contains("[32, 4] does not match the expected [32, 8]"), r2)
    }

    func testConfigFieldsAreNamed() throws {
        let dir = try brokenCopy(config: { $0.removeValue(forKey: "d_model") })
        let path = dir.appendingPathComponent("config.json").path
        XCTAssertEqual(loadError(dir), .badConfig(key: "d_model", reason: "required key is missing from \(path)"))
        let wrong = try brokenCopy(config: { $0["num_heads"] = "4" })
        guard case let .badConfig("num_heads", r)? = loadError(wrong) else { return XCTFail() }
        XCTAssertTrue(r.contains("expected an integer, found string"), r)
        let ff = try brokenCopy(config: { $0["feed_forward_proj"] = "swish" })
        guard case let .badConfig("feed_forward_proj", r2)? = loadError(ff) else { return XCTFail() }
        XCTAssertTrue(r2.contains("'swish' is not supported"), r2)
        let start = try brokenCopy(config: { $0["decoder_start_token_id"] = 5000 })
        guard case .badConfig("decoder_start_token_id", _)? = loadError(start) else { return XCTFail() }
        let type = try brokenCopy(config: { $0["model_type"] = "bart" })
        guard case .badConfig("model_type", _)? = loadError(type) else { return XCTFail() }
        XCTAssertThrowsError(try T5Model(directory: "/nonexistent/t5")) { e in
            guard case .io("/nonexistent/t5", _)? = e as? CausalError else { return XCTFail("\(e)") }
        }
    }
}
