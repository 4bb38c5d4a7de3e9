// The Kotlin bindings against the real default model (SmolLM2-135M-Instruct), with JUnit 5.
// Run by bindings/kotlin/run-tests.sh; LAMINA_TEST_MODEL names a model file (unset: the
// default model, fetched and cached), LAMINA_CLI the command line to compare with.
package dev.lamina

import java.io.File
import java.nio.file.Files
import java.util.concurrent.CountDownLatch
import java.util.concurrent.TimeUnit
import kotlin.concurrent.thread
import kotlin.test.assertEquals
import kotlin.test.assertFailsWith
import kotlin.test.assertNotEquals
import kotlin.test.assertTrue
import org.junit.jupiter.api.AfterAll
import org.junit.jupiter.api.BeforeAll
import org.junit.jupiter.api.MethodOrderer
import org.junit.jupiter.api.Order
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.TestInstance
import org.junit.jupiter.api.TestMethodOrder

private const val PROMPT = "The three primary colors are"
private const val TEMPLATE = "Review: {text}\nSentiment:"
private val REVIEWS = listOf(
    "Absolutely delicious, I buy a box every month." to "positive",
    "Stale and tasteless, the bag arrived torn." to "negative",
    "My kids love these, great value for the price." to "positive",
    "Terrible aftertaste, I threw the rest away." to "negative",
    "Fresh, crunchy and not too sweet. Perfect." to "positive",
    "It made my dog sick. Never again." to "negative",
    "Best coffee I have had in years." to "positive",
    "Arrived melted and the seal was broken." to "negative",
)

private fun greedy(maxTokens: Int = 16) =
    GenerateParams(maxTokens = maxTokens.toUInt(), temperature = 0.0f)

private fun reviews() = TrainingData.Examples(
    REVIEWS.map { (text, label) -> TrainingExample.TextLabel(text, label) },
    TEMPLATE,
)

@TestInstance(TestInstance.Lifecycle.PER_CLASS)
@TestMethodOrder(MethodOrderer.OrderAnnotation::class)
class LaminaTest {
    private val model: String? = System.getenv("LAMINA_TEST_MODEL")?.ifEmpty { null }
    private lateinit var engine: Engine

    @BeforeAll
    fun load() {
        engine = Engine(model, EngineOptions())
    }

    @AfterAll
    fun close() = engine.close()

    @Test
    @Order(1)
    fun greedyGenerationMatchesTheCommandLine() {
        val g = engine.generate(PROMPT, greedy(), null)
        val cli = System.getenv("LAMINA_CLI") ?: error("set LAMINA_CLI to the lamina binary")
        val cmd = mutableListOf(cli, "generate", "--prompt", PROMPT, "--temperature", "0", "--max-tokens", "16")
        model?.let { cmd += listOf("--model", it) }
        val proc = ProcessBuilder(cmd).redirectError(ProcessBuilder.Redirect.DISCARD).start()
        val out = proc.inputStream.bufferedReader().readText()
        assertEquals(0, proc.waitFor())
        assertEquals(out.removeSuffix("\n"), g.text)
        assertTrue(g.tokensGenerated > 0u && g.decodeTokensPerSec > 0.0)
    }

    @Test
    @Order(2)
    fun listenerStreamsPiecesAndStopsEarly() {
        val pieces = mutableListOf<String>()
        val g = engine.generate(PROMPT, greedy(32), object : TokenListener {
            override fun onToken(piece: String): Boolean {
                pieces += piece
                return pieces.size < 3
            }
        })
        assertEquals(3, pieces.size)
        assertEquals(StopReason.LISTENER, g.stopReason)
        assertEquals(pieces.joinToString(""), g.text)
    }

    @Test
    @Order(3)
    fun twoChatTurns() {
        val messages = mutableListOf(ChatMessage("user", "Name a fruit that is yellow."))
        val first = engine.chat(messages, greedy(24), null)
        assertTrue(first.text.isNotBlank())
        messages += ChatMessage("assistant", first.text)
        messages += ChatMessage("user", "And one that is red?")
        val second = engine.chat(messages, greedy(24), null)
        assertTrue(second.text.isNotBlank())
        assertTrue(second.prefillTokens < second.promptTokens, "the first turn comes from the cache")
    }

    @Test
    @Order(4)
    fun classifyGivesProbabilitiesThatSumToOne() {
        val scores = engine.classify("I loved it, delicious!", listOf("positive", "negative"), TEMPLATE)
        assertEquals(listOf("positive", "negative"), scores.map { it.label })
        assertEquals(1.0, scores.sumOf { it.probability }, 1e-6)
    }

    @Test
    @Order(5)
    fun fineTuneSaveLoadAndSwapAdapters() {
        val events = mutableListOf<TrainEvent>()
        val config = TrainConfig(
            epochs = 2u, maxSteps = 4u, batchSize = 4u, learningRate = 5e-3f,
            validationFraction = 0.0f, maxLength = 64u,
        )
        val report = engine.fineTune(reviews(), config, object : TrainListener {
            override fun onEvent(event: TrainEvent): Boolean {
                events += event
                return true
            }
        })
        assertEquals(4u, report.steps)
        assertEquals(REVIEWS.size.toUInt(), report.trainExamples)
        val steps = events.filterIsInstance<TrainEvent.Step>()
        assertEquals(listOf(1u, 2u, 3u, 4u), steps.map { it.step })
        assertTrue(steps.all { it.loss > 0.0 && it.tokensPerSec > 0.0 })
        assertTrue(events.first() is TrainEvent.Started && events.last() is TrainEvent.Finished)

        val text = "Stale, and it tasted of cardboard."
        val prompt = TEMPLATE.replace("{text}", text)
        val base = engine.generate(prompt, greedy(8), null)
        val labels = listOf("positive", "negative")
        val baseScores = engine.classify(text, labels, TEMPLATE)
        val dir = Files.createTempDirectory("lamina-adapter").toFile()
        try {
            engine.saveAdapter(dir.path)
            assertTrue(File(dir, "adapter_config.json").readText().contains("\"r\": 8"))
            engine.loadAdapter(dir.path, "reviews")
        } finally {
            dir.deleteRecursively()
        }
        engine.setAdapters(listOf(AdapterWeight("reviews", 1.0f)))
        val tuned = engine.generate(prompt, greedy(8), null)
        assertNotEquals(base.text, tuned.text)
        val tunedScores = engine.classify(text, labels, TEMPLATE)
        assertTrue(kotlin.math.abs(tunedScores[0].probability - baseScores[0].probability) > 1e-3)
        engine.clearAdapters()
        assertEquals(base.text, engine.generate(prompt, greedy(8), null).text)
    }

    @Test
    @Order(6)
    fun cancelFromAnotherThread() {
        val stepped = CountDownLatch(1)
        var caught: Throwable? = null
        val config = TrainConfig(epochs = 50u, batchSize = 2u, validationFraction = 0.0f, maxLength = 64u)
        val worker = thread {
            try {
                engine.fineTune(reviews(), config, object : TrainListener {
                    override fun onEvent(event: TrainEvent): Boolean {
                        if (event is TrainEvent.Step) stepped.countDown()
                        return true
                    }
                })
            } catch (e: Throwable) {
                caught = e
            }
        }
        assertTrue(stepped.await(300, TimeUnit.SECONDS))
        val asked = System.nanoTime()
        engine.cancel()
        worker.join(120_000)
        assertTrue(!worker.isAlive)
        assertTrue(caught is LaminaException.Cancelled, "got $caught")
        assertTrue((System.nanoTime() - asked) / 1e9 < 60.0)
    }

    @Test
    @Order(7)
    fun typedErrors() {
        val missing = assertFailsWith<LaminaException.ModelNotFound> {
            Engine("/no/such/model.gguf", EngineOptions())
        }
        assertTrue(missing.message!!.contains("/no/such/model.gguf"))
        val bad = TrainingData.Examples(
            listOf(
                TrainingExample.PromptCompletion("Hi", " there"),
                TrainingExample.TextLabel("no prompt here", "x"),
            ),
            null,
        )
        val e = assertFailsWith<LaminaException.InvalidData> {
            engine.fineTune(bad, TrainConfig(maxSteps = 1u), null)
        }
        assertTrue(e.message!!.contains("item 2"), e.message)
        val thrown = assertFailsWith<LaminaException.Listener> {
            engine.generate(PROMPT, greedy(8), object : TokenListener {
                override fun onToken(piece: String): Boolean = throw IllegalStateException("listener bug")
            })
        }
        assertTrue(thrown.message!!.contains("listener bug"), thrown.message)
        assertTrue(engine.generate(PROMPT, greedy(4), null).tokensGenerated > 0u)
    }

    @Test
    @Order(8)
    fun tokenizeAndDeviceInfo() {
        assertTrue(engine.tokenize("Hello world").size >= 2)
        val info = engine.deviceInfo()
        assertTrue(info.backend.isNotEmpty() && info.peakBytes >= info.bytesInUse)
    }
}
