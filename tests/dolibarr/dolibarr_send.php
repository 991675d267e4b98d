<?php
/*
 * dolibarr_send.php: post a request body the way Dolibarr's Webhook module does, with PHP's
 * curl, and say whether Dolibarr would count the post as a success.
 *
 *   php tests/dolibarr/dolibarr_send.php [--dolibarr=19|20|21|22|23] [--allow-localurl]
 *       [--prod] [--connect-timeout=5] [--timeout=30] URL BODY.json
 *
 * Needs `apt-get install php-cli php-curl`. Prints one JSON object (the verdict, the status,
 * curl's error, the request head as curl sent it, the redirections followed) and exits 0 when
 * Dolibarr would count the post a success, 1 when not, 2 on a usage error.
 *
 * What it reproduces, from Dolibarr's trigger (interface_95_modWebhook_WebhookTriggers) and
 * getURLContent() (core/lib/geturl.lib.php) as described in the project's tests/dolibarr/README.rst:
 * - one POST of the body file, byte for byte; User-Agent "Dolibarr geturl function"; curl's own
 *   Accept (any type) and Content-Length; "Content-Type: application/json" from 19.0.3 on (before it,
 *   none: curl then labels the body application/x-www-form-urlencoded, as --dolibarr=19 shows);
 *   curl itself adds "Expect: 100-continue" to bodies over 1 MiB and waits for the 100;
 * - version 20 uses CURLOPT_POST, 21 and later CURLOPT_CUSTOMREQUEST "POST": same bytes on the wire;
 * - 5 s to connect and 30 s in all (MAIN_USE_CONNECT_TIMEOUT, MAIN_USE_RESPONSE_TIMEOUT);
 * - redirections (301, 302, 303, 307) followed by hand, at most 5, posting the same body again;
 * - from 23.0.3 a host that resolves to a loopback, private or reserved address is refused
 *   (curl_error_no 1, nothing sent) unless conf.php sets $dolibarr_allow_localurl_for_webhooks = 1
 *   (--allow-localurl); 20 to 22 post anywhere;
 * - TLS certificates are checked only when $dolibarr_main_prod is set (--prod);
 * - success is exactly: no transport error and 200 <= status < 300; the answer's body is ignored.
 * This is the project's own code, written from that description; it contains no Dolibarr code.
 */

declare(strict_types=1);

const MAX_REDIRECTIONS = 5;
const REDIRECT_CODES = array(301, 302, 303, 307);

function usage(string $error): void
{
	fwrite(STDERR, "error: $error\nusage: php dolibarr_send.php [--dolibarr=19|20|21|22|23] [--allow-localurl] [--prod]"
		." [--connect-timeout=5] [--timeout=30] URL BODY.json\n");
	exit(2);
}

function options(array $argv): array
{
	$options = array('dolibarr' => '22', 'allow-localurl' => false, 'prod' => false, 'connect-timeout' => '5',
		'timeout' => '30');
	$positional = array();
	foreach (array_slice($argv, 1) as $arg) {
		if (!preg_match('/^--([a-z-]+)(?:=(.*))?$/', $arg, $m)) {
			$positional[] = $arg;
			continue;
		}
		if (!array_key_exists($m[1], $options)) {
			usage("unknown option --{$m[1]}");
		}
		$options[$m[1]] = isset($m[2]) ? $m[2] : true;
	}
	if (count($positional) !== 2) {
		usage('give a URL and a body file');
	}
	if (!in_array($options['dolibarr'], array('19', '20', '21', '22', '23'), true)) {
		usage('--dolibarr is 19 (before 19.0.3), 20, 21, 22 or 23 (23.0.3 and later)');
	}
	return array($options, $positional[0], $positional[1]);
}

/** The address curl will connect to, as Dolibarr resolves it before its checks. */
function resolve(string $host): string
{
	if (filter_var($host, FILTER_VALIDATE_IP)) {
		return $host;
	}
	if ($host === 'localhost') {
		return '127.0.0.1';
	}
	$address = gethostbyname($host);
	return filter_var($address, FILTER_VALIDATE_IP) ? $address : '';
}

/** Why 23.0.3 refuses this URL, or '' when it posts to it. */
function local_url_refusal(string $url): string
{
	$host = trim((string) parse_url($url, PHP_URL_HOST), '[]');
	$address = resolve($host);
	if ($address === '') {
		return "cannot resolve $host";
	}
	if (!filter_var($address, FILTER_VALIDATE_IP, FILTER_FLAG_NO_PRIV_RANGE | FILTER_FLAG_NO_RES_RANGE)) {
		return "Error bad hostname IP (private or reserved range). Must be an external URL.";
	}
	return '';
}

function post(string $url, string $body, array $options): array
{
	$version = (int) $options['dolibarr'];
	// Before 19.0.3 Dolibarr set no header of its own; since, it says the body is JSON.
	$headers = $version >= 20 ? array('Content-Type: application/json') : array();
	$ch = curl_init();
	curl_setopt($ch, CURLOPT_USERAGENT, 'Dolibarr geturl function');
	curl_setopt($ch, CURLOPT_HTTPHEADER, $headers);
	curl_setopt($ch, CURLOPT_FOLLOWLOCATION, false);  // Dolibarr follows them itself, below
	curl_setopt($ch, CURLOPT_PROTOCOLS, CURLPROTO_HTTP | CURLPROTO_HTTPS);
	curl_setopt($ch, CURLOPT_CONNECTTIMEOUT, (int) $options['connect-timeout']);
	curl_setopt($ch, CURLOPT_TIMEOUT, (int) $options['timeout']);
	curl_setopt($ch, CURLOPT_SSL_VERIFYPEER, (bool) $options['prod']);
	curl_setopt($ch, CURLOPT_SSL_VERIFYHOST, $options['prod'] ? 2 : 0);
	curl_setopt($ch, CURLOPT_RETURNTRANSFER, true);
	curl_setopt($ch, CURLINFO_HEADER_OUT, true);
	if ($version <= 20) {
		curl_setopt($ch, CURLOPT_POST, true);
	} else {
		curl_setopt($ch, CURLOPT_CUSTOMREQUEST, 'POST');
	}
	curl_setopt($ch, CURLOPT_POSTFIELDS, $body);

	$result = array('http_code' => 0, 'curl_error_no' => 0, 'curl_error' => '', 'request_head' => '',
		'redirections' => array(), 'content' => '');
	for ($hop = 0; ; $hop++) {
		if ($hop > MAX_REDIRECTIONS) {
			$result['curl_error_no'] = 1;
			$result['curl_error'] = 'Maximum number of redirections reached';
			break;
		}
		if ($version >= 23 && !$options['allow-localurl']) {
			$refusal = local_url_refusal($url);
			if ($refusal !== '') {
				// Nothing is sent; Dolibarr's log only shows curl_error_no=1.
				$result['http_code'] = 400;
				$result['curl_error_no'] = 1;
				$result['curl_error'] = $refusal;
				break;
			}
		}
		curl_setopt($ch, CURLOPT_URL, $url);
		$content = curl_exec($ch);
		$result['request_head'] = (string) curl_getinfo($ch, CURLINFO_HEADER_OUT);
		if (curl_errno($ch)) {
			$result['http_code'] = 0;
			$result['curl_error_no'] = curl_errno($ch);
			$result['curl_error'] = curl_error($ch);
			break;
		}
		$result['http_code'] = (int) curl_getinfo($ch, CURLINFO_HTTP_CODE);
		$result['content'] = (string) $content;
		$next = (string) curl_getinfo($ch, CURLINFO_REDIRECT_URL);
		if (!in_array($result['http_code'], REDIRECT_CODES, true) || $next === '') {
			break;
		}
		$result['redirections'][] = array('status' => $result['http_code'], 'location' => $next);
		$url = $next;
	}
	curl_close($ch);
	return $result;
}

if (!function_exists('curl_init')) {
	fwrite(STDERR, "error: PHP's curl extension is missing (apt-get install php-curl)\n");
	exit(2);
}
list($options, $url, $file) = options($argv);
$body = @file_get_contents($file);
if ($body === false) {
	usage("cannot read $file");
}
$started = microtime(true);
$result = post($url, $body, $options);
$success = $result['curl_error_no'] === 0 && $result['http_code'] >= 200 && $result['http_code'] < 300;
echo json_encode(array(
	'dolibarr' => $options['dolibarr'],
	'success' => $success,
	'http_code' => $result['http_code'],
	'curl_error_no' => $result['curl_error_no'],
	'curl_error' => $result['curl_error'],
	'request_head' => $result['request_head'],
	'body_bytes' => strlen($body),
	'redirections' => $result['redirections'],
	'answer' => $result['content'],
	'elapsed' => round(microtime(true) - $started, 3),
), JSON_PRETTY_PRINT | JSON_UNESCAPED_SLASHES), "\n";
exit($success ? 0 : 1);
