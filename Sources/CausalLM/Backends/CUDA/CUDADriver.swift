import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

// The CUDA driver API and NVRTC, loaded at run time with dlopen/dlsym: no CUDA headers or libraries at build time and
// nothing CUDA-specific in the package graph. Only the entry points the CUDA backend uses are bound; each is a C
// function pointer typed with @convention(c) from the driver API's documented signatures (handles are opaque
// pointers, CUdeviceptr is a 64-bit integer, CUresult/nvrtcResult are 32-bit integers, 0 = success).
//
// Search order for each library: the environment variable (CAUSAL_CUDA_LIB / CAUSAL_NVRTC_LIB: a file, or a
// directory holding it), the standard sonames (the dynamic loader's path, LD_LIBRARY_PATH included), the usual install
// directories, and the lib directories of the nvidia-* Python wheels (site-packages/nvidia/*/lib) of the active
// virtual environment, ./.venv*, and the user's and system Python installations.

typealias CUresult = Int32
typealias CUdeviceptr = UInt64
typealias CUhandle = OpaquePointer   // CUcontext, CUmodule, CUfunction, CUstream, CUgraph, CUgraphExec

/// A library opened with dlopen, with where it came from.
final class DynamicLibrary {
    let handle: UnsafeMutableRawPointer
    let path: String

    private init(handle: UnsafeMutableRawPointer, path: String) { self.handle = handle; self.path = path }

    /// The first candidate that opens; nil with every candidate tried and why it failed.
    static func open(_ candidates: [String]) -> (library: DynamicLibrary?, tried: [String]) {
        var tried: [String] = []
        for c in candidates {
            if let h = dlopen(c, RTLD_NOW | RTLD_LOCAL) { return (DynamicLibrary(handle: h, path: c), tried) }
            let why = dlerror().map { String(cString: $0) } ?? "not found"
            tried.append(c.contains("/") && !FileManager.default.fileExists(atPath: c) ? "\(c): no such file" : why)
        }
        return (nil, tried)
    }

    /// The symbol `name` as a function pointer of type `T`.
    func symbol<T>(_ name: String, as: T.Type = T.self) throws -> T {
        guard let p = dlsym(handle, name) else {
            throw CausalError.invalidArgument("\(path) has no symbol \(name) (a CUDA driver or NVRTC too old for this backend?)")
        }
        return unsafeBitCast(p, to: T.self)
    }

    func optionalSymbol<T>(_ name: String, as: T.Type = T.self) -> T? {
        dlsym(handle, name).map { unsafeBitCast($0, to: T.self) }
    }
}

enum CUDALibraryPaths {
    /// lib directories of installed nvidia-* wheels whose directory is named `package` (cuda_nvrtc, cuda_runtime, ...).
    static func wheelDirectories(_ package: String) -> [String] {
        let env = ProcessInfo.processInfo.environment
        var roots: [String] = []
        if let v = env["VIRTUAL_ENV"] { roots.append(v) }
        let cwd = FileManager.default.currentDirectoryPath
        if let entries = try? FileManager.default.contentsOfDirectory(atPath: cwd) {
            roots += entries.filter { $0.hasPrefix(".venv") }.sorted().map { cwd + "/" + $0 }
        }
        if let home = env["HOME"] { roots.append(home + "/.local") }
        roots += ["/usr/local", "/usr"]
        var dirs: [String] = []
        for root in roots {
            for libdir in ["lib", "lib64"] {
                let base = root + "/" + libdir
                guard let pythons = try? FileManager.default.contentsOfDirectory(atPath: base) else { continue }
                for py in pythons.sorted() where py.hasPrefix("python3") {
                    for site in ["site-packages", "dist-packages"] {
                        let d = "\(base)/\(py)/\(site)/nvidia/\(package)/lib"
                        if FileManager.default.fileExists(atPath: d) { dirs.append(d) }
                    }
                }
            }
        }
        return dirs
    }

    /// Files in `dir` whose name starts with `prefix` and contains ".so" (newest version first).
    static func files(in dir: String, prefix: String) -> [String] {
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: dir) else { return [] }
        return names.filter { $0.hasPrefix(prefix) && $0.contains(".so") && !$0.contains("builtins") && !$0.contains(".alt.") }
            .sorted { $0.compare($1, options: .numeric) == .orderedDescending }
            .map { dir + "/" + $0 }
    }

    /// Candidates for an environment variable that names a file or a directory.
    static func fromEnvironment(_ variable: String, prefix: String) -> [String] {
        guard let v = ProcessInfo.processInfo.environment[variable], !v.isEmpty else { return [] }
        var isDir: ObjCBool = false
        if FileManager.default.fileExists(atPath: v, isDirectory: &isDir), isDir.boolValue {
            let found = files(in: v, prefix: prefix)
            return found.isEmpty ? [v + "/" + prefix + ".so"] : found
        }
        return [v]
    }

    static let systemDirectories = ["/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib",
                                    "/usr/local/cuda/lib64", "/usr/local/cuda/targets/x86_64-linux/lib",
                                    "/usr/local/nvidia/lib64", "/usr/lib/wsl/lib"]

    static var driverCandidates: [String] {
        var c = fromEnvironment("CAUSAL_CUDA_LIB", prefix: "libcuda")
        c += ["libcuda.so.1", "libcuda.so"]
        c += systemDirectories.map { $0 + "/libcuda.so.1" }.filter { FileManager.default.fileExists(atPath: $0) }
        return c
    }

    static var nvrtcCandidates: [String] {
        var c = fromEnvironment("CAUSAL_NVRTC_LIB", prefix: "libnvrtc")
        for dir in wheelDirectories("cuda_nvrtc") { c += files(in: dir, prefix: "libnvrtc") }
        c += ["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"]
        for dir in systemDirectories { c += files(in: dir, prefix: "libnvrtc") }
        var seen = Set<String>()
        return c.filter { seen.insert($0).inserted }
    }
}

/// The CUDA driver API entry points the backend uses.
final class CUDADriver {
    let library: DynamicLibrary
    let cuInit: @convention(c) (UInt32) -> CUresult
    let cuDeviceGetCount: @convention(c) (UnsafeMutablePointer<Int32>) -> CUresult
    let cuDeviceGet: @convention(c) (UnsafeMutablePointer<Int32>, Int32) -> CUresult
    let cuDeviceGetName: @convention(c) (UnsafeMutablePointer<CChar>, Int32, Int32) -> CUresult
    let cuDeviceGetAttribute: @convention(c) (UnsafeMutablePointer<Int32>, Int32, Int32) -> CUresult
    let cuDevicePrimaryCtxRetain: @convention(c) (UnsafeMutablePointer<CUhandle?>, Int32) -> CUresult
    let cuCtxSetCurrent: @convention(c) (CUhandle?) -> CUresult
    let cuMemAlloc: @convention(c) (UnsafeMutablePointer<CUdeviceptr>, Int) -> CUresult
    let cuMemFree: @convention(c) (CUdeviceptr) -> CUresult
    let cuMemAllocHost: @convention(c) (UnsafeMutablePointer<UnsafeMutableRawPointer?>, Int) -> CUresult
    let cuMemFreeHost: @convention(c) (UnsafeMutableRawPointer?) -> CUresult
    let cuMemcpyHtoDAsync: @convention(c) (CUdeviceptr, UnsafeRawPointer?, Int, CUhandle?) -> CUresult
    let cuMemcpyDtoHAsync: @convention(c) (UnsafeMutableRawPointer?, CUdeviceptr, Int, CUhandle?) -> CUresult
    let cuMemcpyDtoDAsync: @convention(c) (CUdeviceptr, CUdeviceptr, Int, CUhandle?) -> CUresult
    let cuModuleLoadData: @convention(c) (UnsafeMutablePointer<CUhandle?>, UnsafeRawPointer?) -> CUresult
    let cuModuleGetFunction: @convention(c) (UnsafeMutablePointer<CUhandle?>, CUhandle?, UnsafePointer<CChar>) -> CUresult
    let cuLaunchKernel: @convention(c) (CUhandle?, UInt32, UInt32, UInt32, UInt32, UInt32, UInt32, UInt32, CUhandle?,
                                         UnsafeMutablePointer<UnsafeMutableRawPointer?>?, UnsafeMutablePointer<UnsafeMutableRawPointer?>?) -> CUresult
    let cuStreamCreate: @convention(c) (UnsafeMutablePointer<CUhandle?>, UInt32) -> CUresult
    let cuStreamSynchronize: @convention(c) (CUhandle?) -> CUresult
    let cuGetErrorString: @convention(c) (CUresult, UnsafeMutablePointer<UnsafePointer<CChar>?>) -> CUresult
    let cuDriverGetVersion: @convention(c) (UnsafeMutablePointer<Int32>) -> CUresult

    static let attributeComputeCapabilityMajor: Int32 = 75
    static let attributeComputeCapabilityMinor: Int32 = 76

    /// Opens libcuda; throws "no CUDA device: libcuda.so.1 not found (...)" with every path tried when it is absent.
    init() throws {
        let (lib, tried) = DynamicLibrary.open(CUDALibraryPaths.driverCandidates)
        guard let lib else {
            throw CausalError.invalidArgument("no CUDA device: libcuda.so.1 not found (tried \(tried.joined(separator: "; "))); set CAUSAL_CUDA_LIB to the driver library, or run with --device cpu")
        }
        library = lib
        cuInit = try lib.symbol("cuInit")
        cuDeviceGetCount = try lib.symbol("cuDeviceGetCount")
        cuDeviceGet = try lib.symbol("cuDeviceGet")
        cuDeviceGetName = try lib.symbol("cuDeviceGetName")
        cuDeviceGetAttribute = try lib.symbol("cuDeviceGetAttribute")
        cuDevicePrimaryCtxRetain = try lib.symbol("cuDevicePrimaryCtxRetain")
        cuCtxSetCurrent = try lib.symbol("cuCtxSetCurrent")
        cuMemAlloc = try lib.symbol("cuMemAlloc_v2")
        cuMemFree = try lib.symbol("cuMemFree_v2")
        cuMemAllocHost = try lib.symbol("cuMemAllocHost_v2")
        cuMemFreeHost = try lib.symbol("cuMemFreeHost")
        cuMemcpyHtoDAsync = try lib.symbol("cuMemcpyHtoDAsync_v2")
        cuMemcpyDtoHAsync = try lib.symbol("cuMemcpyDtoHAsync_v2")
        cuMemcpyDtoDAsync = try lib.symbol("cuMemcpyDtoDAsync_v2")
        cuModuleLoadData = try lib.symbol("cuModuleLoadData")
        cuModuleGetFunction = try lib.symbol("cuModuleGetFunction")
        cuLaunchKernel = try lib.symbol("cuLaunchKernel")
        cuStreamCreate = try lib.symbol("cuStreamCreate")
        cuStreamSynchronize = try lib.symbol("cuStreamSynchronize")
        cuGetErrorString = try lib.symbol("cuGetErrorString")
        cuDriverGetVersion = try lib.symbol("cuDriverGetVersion")
    }

    func message(_ r: CUresult) -> String {
        var s: UnsafePointer<CChar>? = nil
        _ = cuGetErrorString(r, &s)
        return s.map { String(cString: $0) } ?? "CUDA error \(r)"
    }

    /// Throws for a failed call, naming it.
    func check(_ r: CUresult, _ what: @autoclosure () -> String) throws {
        guard r == 0 else { throw CausalError.invalidArgument("CUDA: \(what()) failed: \(message(r)) (\(r))") }
    }
}

/// The NVRTC entry points: CUDA C++ source to PTX or CUBIN at run time.
final class NVRTC {
    typealias Program = OpaquePointer
    let library: DynamicLibrary
    let nvrtcVersion: @convention(c) (UnsafeMutablePointer<Int32>, UnsafeMutablePointer<Int32>) -> Int32
    let nvrtcCreateProgram: @convention(c) (UnsafeMutablePointer<Program?>, UnsafePointer<CChar>, UnsafePointer<CChar>?, Int32,
                                             UnsafePointer<UnsafePointer<CChar>?>?, UnsafePointer<UnsafePointer<CChar>?>?) -> Int32
    let nvrtcCompileProgram: @convention(c) (Program?, Int32, UnsafePointer<UnsafePointer<CChar>?>?) -> Int32
    let nvrtcGetPTXSize: @convention(c) (Program?, UnsafeMutablePointer<Int>) -> Int32
    let nvrtcGetPTX: @convention(c) (Program?, UnsafeMutablePointer<CChar>) -> Int32
    let nvrtcGetCUBINSize: (@convention(c) (Program?, UnsafeMutablePointer<Int>) -> Int32)?
    let nvrtcGetCUBIN: (@convention(c) (Program?, UnsafeMutablePointer<CChar>) -> Int32)?
    let nvrtcGetProgramLogSize: @convention(c) (Program?, UnsafeMutablePointer<Int>) -> Int32
    let nvrtcGetProgramLog: @convention(c) (Program?, UnsafeMutablePointer<CChar>) -> Int32
    let nvrtcDestroyProgram: @convention(c) (UnsafeMutablePointer<Program?>) -> Int32
    let nvrtcGetErrorString: @convention(c) (Int32) -> UnsafePointer<CChar>?

    /// Opens libnvrtc; throws "NVRTC not found (...)" with every path tried. libnvrtc finds its companion
    /// libnvrtc-builtins in its own directory (its RUNPATH is $ORIGIN), so only libnvrtc itself is searched for.
    init() throws {
        let (lib, tried) = DynamicLibrary.open(CUDALibraryPaths.nvrtcCandidates)
        guard let lib else {
            throw CausalError.invalidArgument("NVRTC not found (tried \(tried.joined(separator: "; "))); install the nvidia-cuda-nvrtc-cu12 wheel into a virtual environment or set CAUSAL_NVRTC_LIB to libnvrtc.so")
        }
        library = lib
        nvrtcVersion = try lib.symbol("nvrtcVersion")
        nvrtcCreateProgram = try lib.symbol("nvrtcCreateProgram")
        nvrtcCompileProgram = try lib.symbol("nvrtcCompileProgram")
        nvrtcGetPTXSize = try lib.symbol("nvrtcGetPTXSize")
        nvrtcGetPTX = try lib.symbol("nvrtcGetPTX")
        nvrtcGetCUBINSize = lib.optionalSymbol("nvrtcGetCUBINSize")
        nvrtcGetCUBIN = lib.optionalSymbol("nvrtcGetCUBIN")
        nvrtcGetProgramLogSize = try lib.symbol("nvrtcGetProgramLogSize")
        nvrtcGetProgramLog = try lib.symbol("nvrtcGetProgramLog")
        nvrtcDestroyProgram = try lib.symbol("nvrtcDestroyProgram")
        nvrtcGetErrorString = try lib.symbol("nvrtcGetErrorString")
    }

    var version: String {
        var major: Int32 = 0, minor: Int32 = 0
        _ = nvrtcVersion(&major, &minor)
        return "\(major).\(minor)"
    }

    /// Compiled code of one program: PTX (for a virtual `compute_XY` architecture) or CUBIN (for `sm_XY`).
    struct Output {
        let code: [CChar]
        let isCUBIN: Bool
        let log: String
    }

    /// Compiles `source` for `architecture` (compute_XY: PTX; sm_XY: CUBIN); throws with NVRTC's log on failure.
    func compile(_ source: String, name: String, architecture: String, extraOptions: [String] = []) throws -> Output {
        var prog: Program? = nil
        var r = nvrtcCreateProgram(&prog, source, name, 0, nil, nil)
        guard r == 0 else { throw CausalError.invalidArgument("NVRTC: nvrtcCreateProgram(\(name)) failed: \(errorString(r))") }
        defer { _ = nvrtcDestroyProgram(&prog) }
        let options = ["--gpu-architecture=\(architecture)", "--std=c++17"] + extraOptions
        let cOptions = options.map { strdup($0) }
        defer { cOptions.forEach { free($0) } }
        r = cOptions.map { UnsafePointer($0) }.withUnsafeBufferPointer { nvrtcCompileProgram(prog, Int32(options.count), $0.baseAddress) }
        var logSize = 0
        _ = nvrtcGetProgramLogSize(prog, &logSize)
        var logBytes = [CChar](repeating: 0, count: max(logSize, 1))
        _ = nvrtcGetProgramLog(prog, &logBytes)
        let log = String(cString: logBytes)
        guard r == 0 else {
            throw CausalError.invalidArgument("NVRTC: compiling \(name) for \(architecture) failed: \(errorString(r))\n\(log)")
        }
        let cubin = architecture.hasPrefix("sm_")
        var size = 0
        if cubin {
            guard let getSize = nvrtcGetCUBINSize, let get = nvrtcGetCUBIN else {
                throw CausalError.invalidArgument("NVRTC \(version) cannot return CUBIN (nvrtcGetCUBIN missing)")
            }
            _ = getSize(prog, &size)
            var code = [CChar](repeating: 0, count: max(size, 1))
            _ = get(prog, &code)
            return Output(code: code, isCUBIN: true, log: log)
        }
        _ = nvrtcGetPTXSize(prog, &size)
        var code = [CChar](repeating: 0, count: max(size, 1))
        _ = nvrtcGetPTX(prog, &code)
        return Output(code: code, isCUBIN: false, log: log)
    }

    func errorString(_ r: Int32) -> String { nvrtcGetErrorString(r).map { String(cString: $0) } ?? "NVRTC error \(r)" }
}
