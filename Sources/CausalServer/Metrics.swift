import CausalLM
import Foundation

/// HTTP-level counters, rendered with the scheduler's metrics in Prometheus' text format at `GET /metrics`.
public final class ServerMetrics: @unchecked Sendable {
    private let lock = NSLock()
    private var requests: [String: [Int: Int]] = [:]   // endpoint -> status -> count
    private var promptTokens = 0
    private var completionTokens = 0
    private var finishReasons: [String: Int] = [:]
    private var duration = Histogram(bounds: Histogram.latencyBounds)
    private var embeddingInputs = 0
    private var embeddingTokens = 0

    public init() {}

    /// Records one answered embeddings request.
    func recordEmbeddings(inputs: Int, tokens: Int) {
        lock.lock(); defer { lock.unlock() }
        embeddingInputs += inputs
        embeddingTokens += tokens
    }

    /// Records one finished request.
    func record(endpoint: String, status: Int, seconds: Double, promptTokens p: Int?, completionTokens c: Int?, finishReason: String?) {
        lock.lock(); defer { lock.unlock() }
        requests[endpoint, default: [:]][status, default: 0] += 1
        duration.observe(seconds)
        promptTokens += p ?? 0
        completionTokens += c ?? 0
        if let f = finishReason { finishReasons[f, default: 0] += 1 }
    }

    /// Requests answered so far, by endpoint and status.
    public var requestCounts: [String: [Int: Int]] {
        lock.lock(); defer { lock.unlock() }
        return requests
    }

    /// Prometheus exposition text (version 0.0.4).
    func render(scheduler m: SchedulerMetrics) -> String {
        lock.lock()
        let requests = self.requests, promptTokens = self.promptTokens, completionTokens = self.completionTokens
        let finishReasons = self.finishReasons, duration = self.duration
        let embeddingInputs = self.embeddingInputs, embeddingTokens = self.embeddingTokens
        lock.unlock()

        var out = ""
        func family(_ name: String, _ type: String, _ help: String) {
            out += "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n"
        }
        func sample(_ name: String, _ labels: [(String, String)] = [], _ value: Double) {
            out += name
            if !labels.isEmpty {
                out += "{" + labels.map { "\($0.0)=\"\(escape($0.1))\"" }.joined(separator: ",") + "}"
            }
            out += " " + format(value) + "\n"
        }
        func histogram(_ name: String, _ help: String, _ h: Histogram) {
            family(name, "histogram", help)
            for (b, c) in zip(h.bounds, h.cumulativeCounts) { sample(name + "_bucket", [("le", format(b))], Double(c)) }
            sample(name + "_bucket", [("le", "+Inf")], Double(h.count))
            sample(name + "_sum", [], h.sum)
            sample(name + "_count", [], Double(h.count))
        }

        family("causal_requests_total", "counter", "HTTP requests answered, by endpoint and status code.")
        for endpoint in requests.keys.sorted() {
            for status in requests[endpoint]!.keys.sorted() {
                sample("causal_requests_total", [("endpoint", endpoint), ("status", String(status))], Double(requests[endpoint]![status]!))
            }
        }
        histogram("causal_request_duration_seconds", "Time from request to the end of the response (streams included).", duration)
        family("causal_prompt_tokens_total", "counter", "Prompt tokens of completion requests that were answered with 200.")
        sample("causal_prompt_tokens_total", [], Double(promptTokens))
        family("causal_generation_tokens_total", "counter", "Tokens generated for completion requests that were answered with 200 (including ones whose client left).")
        sample("causal_generation_tokens_total", [], Double(completionTokens))
        family("causal_finish_reason_total", "counter", "Completions by finish reason (cancelled: the client left or the server shut down).")
        for r in finishReasons.keys.sorted() { sample("causal_finish_reason_total", [("reason", r)], Double(finishReasons[r]!)) }

        family("causal_embedding_inputs_total", "counter", "Inputs embedded by /v1/embeddings.")
        sample("causal_embedding_inputs_total", [], Double(embeddingInputs))
        family("causal_embedding_tokens_total", "counter", "Tokens of the inputs embedded by /v1/embeddings (special tokens included).")
        sample("causal_embedding_tokens_total", [], Double(embeddingTokens))

        family("causal_running_sequences", "gauge", "Sequences being generated now.")
        sample("causal_running_sequences", [], Double(m.running))
        family("causal_queued_requests", "gauge", "Requests waiting for a free slot.")
        sample("causal_queued_requests", [], Double(m.queued))
        family("causal_kv_reserved_tokens", "gauge", "KV-cache positions reserved by running sequences.")
        sample("causal_kv_reserved_tokens", [], Double(m.reservedKVTokens))
        family("causal_kv_max_tokens", "gauge", "KV-cache positions the running sequences may reserve together.")
        sample("causal_kv_max_tokens", [], Double(m.maxKVTokens))
        family("causal_scheduler_steps_total", "counter", "Forward steps run.")
        sample("causal_scheduler_steps_total", [], Double(m.steps))
        family("causal_scheduler_requests_total", "counter", "Requests accepted by the scheduler.")
        sample("causal_scheduler_requests_total", [], Double(m.submitted))
        family("causal_scheduler_rejected_total", "counter", "Requests refused because the queue was full (429).")
        sample("causal_scheduler_rejected_total", [], Double(m.rejected))
        family("causal_scheduler_sequences_finished_total", "counter", "Sequences that left the scheduler, by outcome.")
        for (k, v) in [("stop", m.finishedStop), ("length", m.finishedLength), ("cancelled", m.cancelled), ("failed", m.failed)] {
            sample("causal_scheduler_sequences_finished_total", [("outcome", k)], Double(v))
        }
        family("causal_scheduler_prompt_tokens_total", "counter", "Prompt tokens run through the model (prefill).")
        sample("causal_scheduler_prompt_tokens_total", [], Double(m.promptTokens))
        family("causal_scheduler_generated_tokens_total", "counter", "Tokens generated by the model.")
        sample("causal_scheduler_generated_tokens_total", [], Double(m.generatedTokens))
        histogram("causal_step_batch_tokens", "Tokens per forward step (decode tokens plus prompt chunks).", m.stepTokens)
        histogram("causal_step_batch_sequences", "Sequences per forward step.", m.stepSequences)
        histogram("causal_step_duration_seconds", "Duration of one forward step.", m.stepDuration)
        histogram("causal_time_to_first_token_seconds", "Time from submission (queueing included) to the first new token.", m.timeToFirstToken)
        histogram("causal_inter_token_latency_seconds", "Time between consecutive new tokens of one sequence (per-token latency).", m.interTokenLatency)
        histogram("causal_queue_wait_seconds", "Time from submission to admission.", m.queueWait)
        family("causal_prefix_cache_hits_total", "counter", "Admitted prompts that started from cached keys and values of an earlier prompt (automatic prefix caching).")
        sample("causal_prefix_cache_hits_total", [], Double(m.prefixCacheHits))
        family("causal_prefix_cache_misses_total", "counter", "Admitted prompts that found no cached prefix (prompts scored with logprobs are not looked up).")
        sample("causal_prefix_cache_misses_total", [], Double(m.prefixCacheMisses))
        family("causal_prefix_cache_hit_tokens_total", "counter", "Prompt tokens copied from the prefix cache instead of run.")
        sample("causal_prefix_cache_hit_tokens_total", [], Double(m.prefixCacheHitTokens))
        family("causal_prefix_cache_evictions_total", "counter", "Prefix-cache entries dropped (least recently used first) to stay under its memory budget.")
        sample("causal_prefix_cache_evictions_total", [], Double(m.prefixCacheEvictions))
        family("causal_prefix_cache_bytes", "gauge", "Bytes of keys and values held by the prefix cache.")
        sample("causal_prefix_cache_bytes", [], Double(m.prefixCacheBytes))
        family("causal_prefix_cache_limit_bytes", "gauge", "The prefix cache's memory budget (0: off).")
        sample("causal_prefix_cache_limit_bytes", [], Double(m.prefixCacheLimitBytes))
        family("causal_scheduler_forked_sequences_total", "counter", "Choices of n > 1 requests that started from a copy of another choice's prompt instead of running it.")
        sample("causal_scheduler_forked_sequences_total", [], Double(m.forkedSequences))
        return out
    }

    private func escape(_ s: String) -> String {
        s.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"")
            .replacingOccurrences(of: "\n", with: "\\n")
    }

    private func format(_ v: Double) -> String {
        if v == v.rounded() && abs(v) < 1e15 { return String(Int(v)) }
        return "\(v)"
    }
}
