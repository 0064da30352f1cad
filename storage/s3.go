package storage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/feature/s3/transfermanager"
	tmtypes "github.com/aws/aws-sdk-go-v2/feature/s3/transfermanager/types"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	s3types "github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"
	"github.com/aws/smithy-go/logging"
)

// Values of S3Config.RequestChecksum.
const (
	// RequestChecksumWhenSupported sends a CRC32 checksum with every upload,
	// the SDK's default.
	RequestChecksumWhenSupported = "when_supported"
	// RequestChecksumWhenRequired sends checksums only where the API
	// requires them, for S3-compatible stores that refuse the others.
	RequestChecksumWhenRequired = "when_required"
)

// Part sizes of S3's multipart uploads.
const (
	// DefaultS3PartSize is S3Config.PartSize's default.
	DefaultS3PartSize = 8 << 20
	// MinS3PartSize is S3's minimum size of a part other than the last.
	MinS3PartSize = 5 << 20
	// DefaultS3Concurrency is S3Config.Concurrency's default.
	DefaultS3Concurrency = 5
)

// s3AbortAttempts bounds the attempts to abort a failed multipart upload.
const s3AbortAttempts = 6

// Retries of a conditional PutObject that S3 answers 409
// ConditionalRequestConflict (a concurrent conditional write of the key
// was in progress): at most s3ConflictAttempts attempts, the first retry
// after s3ConflictWait, doubling.
const (
	s3ConflictAttempts = 5
	s3ConflictWait     = 50 * time.Millisecond
)

// s3CleanupTimeout bounds the abort of a failed multipart upload, which
// runs even when the caller's context has ended.
const s3CleanupTimeout = time.Minute

// S3Config configures an S3 store.
type S3Config struct {
	// Bucket holds the objects; it must exist.
	Bucket string
	// Prefix, if not "", is a key prefix that the store's keys live under,
	// as if it were a directory: with Prefix "exports", key "a/b" is the S3
	// object "exports/a/b".
	Prefix string
	// Region is the bucket's region; "" means the SDK's default chain
	// (AWS_REGION, the shared config file).
	Region string
	// Endpoint, if not "", is the URL of an S3-compatible server
	// ("http://127.0.0.1:7070") in place of AWS's.
	Endpoint string
	// PathStyle addresses the bucket in the URL's path rather than its
	// host name, as most S3-compatible servers need.
	PathStyle bool
	// AccessKeyID, SecretAccessKey and the optional SessionToken are static
	// credentials. If AccessKeyID is "", the SDK's default chain provides
	// them (environment, shared files, web identity, ECS or EC2 roles).
	AccessKeyID     string
	SecretAccessKey string
	SessionToken    string
	// SSE is the server-side encryption of uploaded objects: "" (the
	// bucket's default), "AES256" (SSE-S3) or "aws:kms" (SSE-KMS).
	SSE string
	// SSEKMSKeyID is the KMS key for "aws:kms"; "" means the AWS-managed
	// key.
	SSEKMSKeyID string
	// RequestChecksum is RequestChecksumWhenSupported (the default if "")
	// or RequestChecksumWhenRequired.
	RequestChecksum string
	// PartSize is the size of a multipart upload's parts, at least
	// MinS3PartSize; 0 means DefaultS3PartSize. Objects up to PartSize are
	// uploaded in one request. A Put buffers up to Concurrency+1 parts.
	PartSize int64
	// Concurrency is how many parts a Put uploads at once; 0 means
	// DefaultS3Concurrency.
	Concurrency int
}

// S3 is a Store in an S3 bucket, or a store with S3's API, and a Linker
// whose links are presigned GET URLs. Put streams: objects above
// S3Config.PartSize are sent as multipart uploads, and a failed one is
// aborted so that no parts are left behind. A process killed mid-upload
// cannot abort: give the bucket a lifecycle rule that aborts incomplete
// multipart uploads after a day or so. List skips objects whose keys
// are not valid keys (see ValidateKey), such as "directory" markers ending
// in '/'.
//
// Unlike FS, S3 lets a key name both an object and a "directory" of
// objects ("a/b" and "a/b/c"), though S3-compatible servers that store
// objects as files, like FS, may refuse that.
type S3 struct {
	client   *s3.Client
	presign  *s3.PresignClient
	uploader *transfermanager.Client
	bucket   string
	prefix   string
	sse      tmtypes.ServerSideEncryption
	kmsKeyID string
	// transport is the HTTP transport that Close closes, if S3 made it.
	transport *http.Transport
	logger    *slog.Logger
}

var (
	_ Store       = (*S3)(nil)
	_ Linker      = (*S3)(nil)
	_ Conditional = (*S3)(nil)
)

// NewS3 returns an S3 store for cfg. It checks cfg and loads credentials
// but does not contact S3.
func NewS3(ctx context.Context, cfg S3Config, logger *slog.Logger) (*S3, error) {
	return newS3(ctx, cfg, logger)
}

// newS3 is NewS3 with options for the S3 client, for tests.
func newS3(ctx context.Context, cfg S3Config, logger *slog.Logger, optFns ...func(*s3.Options)) (*S3, error) {
	prefix, err := cfg.check()
	if err != nil {
		return nil, fmt.Errorf("new S3 store: %w", err)
	}
	var loadOpts []func(*config.LoadOptions) error
	if cfg.Region != "" {
		loadOpts = append(loadOpts, config.WithRegion(cfg.Region))
	}
	if cfg.AccessKeyID != "" {
		loadOpts = append(loadOpts, config.WithCredentialsProvider(
			credentials.NewStaticCredentialsProvider(cfg.AccessKeyID, cfg.SecretAccessKey, cfg.SessionToken)))
	}
	awsCfg, err := config.LoadDefaultConfig(ctx, loadOpts...)
	if err != nil {
		return nil, fmt.Errorf("new S3 store: load AWS config: %w", err)
	}
	if awsCfg.Region == "" {
		return nil, errors.New("new S3 store: no region: set it in the configuration or AWS_REGION")
	}
	checksum := aws.RequestChecksumCalculationWhenSupported
	if cfg.RequestChecksum == RequestChecksumWhenRequired {
		checksum = aws.RequestChecksumCalculationWhenRequired
	}
	s := &S3{
		bucket:   cfg.Bucket,
		prefix:   prefix,
		sse:      tmtypes.ServerSideEncryption(cfg.SSE),
		kmsKeyID: cfg.SSEKMSKeyID,
		logger:   logger.With("component", "s3"),
	}
	// An HTTP client of our own, so that Close can close its connections.
	if bc, ok := awsCfg.HTTPClient.(*awshttp.BuildableClient); ok {
		s.transport = bc.GetTransport()
		awsCfg.HTTPClient = &http.Client{Transport: s.transport, Timeout: bc.GetTimeout()}
	}
	s.client = s3.NewFromConfig(awsCfg, append([]func(*s3.Options){func(o *s3.Options) {
		o.UsePathStyle = cfg.PathStyle
		if cfg.Endpoint != "" {
			o.BaseEndpoint = aws.String(cfg.Endpoint)
		}
		o.RequestChecksumCalculation = checksum
		// GetObject of a multipart object would warn on every call.
		o.DisableLogOutputChecksumValidationSkipped = true
		o.Logger = sdkLogger{s.logger}
	}}, optFns...)...)
	s.presign = s3.NewPresignClient(s.client)
	partSize := orDefault(cfg.PartSize, DefaultS3PartSize)
	s.uploader = transfermanager.New(s.client, func(o *transfermanager.Options) {
		o.PartSizeBytes = partSize
		o.MultipartUploadThreshold = partSize
		o.Concurrency = int(orDefault(int64(cfg.Concurrency), DefaultS3Concurrency))
		o.RequestChecksumCalculation = checksum
		// Abort failed uploads with a context of their own.
		o.FailTimeout = s3CleanupTimeout
	})
	return s, nil
}

// sdkLogger logs the SDK's messages with slog.
type sdkLogger struct{ logger *slog.Logger }

func (l sdkLogger) Logf(c logging.Classification, format string, v ...any) {
	level := slog.LevelDebug
	if c == logging.Warn {
		level = slog.LevelWarn
	}
	l.logger.Log(context.Background(), level, fmt.Sprintf(format, v...), "source", "aws-sdk")
}

// orDefault returns v, or def if v is 0.
func orDefault(v, def int64) int64 {
	if v == 0 {
		return def
	}
	return v
}

// check validates c and returns the key prefix, ending in '/' if not "".
func (c S3Config) check() (prefix string, err error) {
	if c.Bucket == "" {
		return "", errors.New("no bucket")
	}
	if c.Prefix != "" {
		p := strings.TrimSuffix(c.Prefix, "/")
		if err := ValidateKey(p); err != nil {
			return "", fmt.Errorf("prefix: %w", err)
		}
		prefix = p + "/"
	}
	if c.Endpoint != "" {
		u, err := url.Parse(c.Endpoint)
		if err != nil {
			return "", fmt.Errorf("endpoint: %w", err)
		}
		if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return "", fmt.Errorf("endpoint %q: not an http or https URL", c.Endpoint)
		}
	}
	if (c.AccessKeyID == "") != (c.SecretAccessKey == "") {
		return "", errors.New("static credentials need both an access key ID and a secret access key")
	}
	if c.SessionToken != "" && c.AccessKeyID == "" {
		return "", errors.New("a session token needs an access key ID and a secret access key")
	}
	switch c.SSE {
	case "", string(tmtypes.ServerSideEncryptionAes256):
		if c.SSEKMSKeyID != "" {
			return "", fmt.Errorf("a KMS key ID needs SSE %q", tmtypes.ServerSideEncryptionAwsKms)
		}
	case string(tmtypes.ServerSideEncryptionAwsKms):
	default:
		return "", fmt.Errorf("SSE %q: want \"\", %q or %q", c.SSE,
			tmtypes.ServerSideEncryptionAes256, tmtypes.ServerSideEncryptionAwsKms)
	}
	switch c.RequestChecksum {
	case "", RequestChecksumWhenSupported, RequestChecksumWhenRequired:
	default:
		return "", fmt.Errorf("request checksum %q: want %q or %q", c.RequestChecksum,
			RequestChecksumWhenSupported, RequestChecksumWhenRequired)
	}
	if c.PartSize != 0 && c.PartSize < MinS3PartSize {
		return "", fmt.Errorf("part size %d: below S3's minimum of %d", c.PartSize, MinS3PartSize)
	}
	if c.Concurrency < 0 {
		return "", fmt.Errorf("concurrency %d: negative", c.Concurrency)
	}
	return prefix, nil
}

// Close closes the store's idle HTTP connections. The store remains usable.
func (s *S3) Close() error {
	if s.transport != nil {
		s.transport.CloseIdleConnections()
	}
	return nil
}

// Put streams r through the transfer manager: in one PutObject if it is
// at most a part long, else as a multipart upload, which S3 makes visible
// only when complete. The transfer manager aborts a multipart upload that
// fails; Put aborts it again in case that abort failed, since abandoned
// parts are stored, and billed, until aborted. Canceling ctx stops the
// reading of r at once; requests already sent get up to a minute more.
func (s *S3) Put(ctx context.Context, key string, r io.Reader) (int64, error) {
	if err := ValidateKey(key); err != nil {
		return 0, fmt.Errorf("put object: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("put object %q: %w", key, err)
	}
	// Canceling ctx ends the body, so that the transfer manager stops and
	// waits for the parts in flight before it aborts the upload. Canceling
	// their requests instead would not stop a server that has their bodies
	// from storing the parts, possibly after the abort, leaving them behind.
	// The requests get s3CleanupTimeout more to finish.
	upCtx, cancel := context.WithCancelCause(context.WithoutCancel(ctx))
	defer cancel(nil)
	defer context.AfterFunc(ctx, func() {
		select {
		case <-upCtx.Done():
		case <-time.After(s3CleanupTimeout):
			cancel(context.Cause(ctx))
		}
	})()
	body := &countingReader{ctxReader: ctxReader{ctx: ctx, r: r}}
	_, err := s.uploader.UploadObject(upCtx, &transfermanager.UploadObjectInput{
		Bucket:               aws.String(s.bucket),
		Key:                  aws.String(s.prefix + key),
		Body:                 body,
		ServerSideEncryption: s.sse,
		SSEKMSKeyID:          nonEmpty(s.kmsKeyID),
	})
	if err != nil {
		// The transfer manager's error does not always wrap the cause.
		for _, cause := range []error{body.err, ctx.Err()} {
			if cause != nil && !errors.Is(err, cause) {
				err = fmt.Errorf("%w: %w", cause, err)
			}
		}
		var mpu transfermanager.MultipartUploadError
		if errors.As(err, &mpu) {
			err = errors.Join(err, s.abort(ctx, key, mpu.UploadID()))
		}
		return 0, fmt.Errorf("put object %q: %w", key, err)
	}
	return body.n, nil
}

// abort aborts a multipart upload, which the transfer manager may already
// have done, and checks that no parts are left: a part still being written
// when the abort arrives can make it fail, or survive it, so abort retries.
func (s *S3) abort(ctx context.Context, key, uploadID string) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s3CleanupTimeout)
	defer cancel()
	wait := 100 * time.Millisecond
	for attempt := 1; ; attempt++ {
		err := s.abortOnce(ctx, key, uploadID)
		if err == nil {
			return nil
		}
		if attempt == s3AbortAttempts || ctx.Err() != nil {
			s.logger.Error("abort multipart upload: its parts stay stored until it is aborted",
				"key", key, "upload_id", uploadID, "attempts", attempt, "err", err)
			return err
		}
		s.logger.Warn("abort multipart upload; retrying", "key", key, "upload_id", uploadID, "err", err)
		select {
		case <-ctx.Done():
		case <-time.After(wait):
		}
		wait *= 2
	}
}

func (s *S3) abortOnce(ctx context.Context, key, uploadID string) error {
	_, err := s.client.AbortMultipartUpload(ctx, &s3.AbortMultipartUploadInput{
		Bucket:   aws.String(s.bucket),
		Key:      aws.String(s.prefix + key),
		UploadId: aws.String(uploadID),
	})
	if err != nil && !hasErrorCode(err, "NoSuchUpload") {
		return fmt.Errorf("abort multipart upload %s: %w", uploadID, err)
	}
	out, err := s.client.ListParts(ctx, &s3.ListPartsInput{
		Bucket:   aws.String(s.bucket),
		Key:      aws.String(s.prefix + key),
		UploadId: aws.String(uploadID),
	})
	switch {
	case hasErrorCode(err, "NoSuchUpload"):
		return nil
	case err != nil:
		return fmt.Errorf("abort multipart upload %s: list parts: %w", uploadID, err)
	}
	return fmt.Errorf("abort multipart upload %s: still there, with %d parts", uploadID, len(out.Parts))
}

// countingReader counts the bytes read through it, and keeps the first
// error other than io.EOF.
type countingReader struct {
	ctxReader
	n   int64
	err error
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.ctxReader.Read(p)
	c.n += int64(n)
	if err != nil && err != io.EOF && c.err == nil {
		c.err = err
	}
	return n, err
}

// Get opens the object with GetObject.
func (s *S3) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	if err := ValidateKey(key); err != nil {
		return nil, fmt.Errorf("get object: %w", err)
	}
	out, err := s.client.GetObject(ctx, &s3.GetObjectInput{
		Bucket: aws.String(s.bucket),
		Key:    aws.String(s.prefix + key),
	})
	if err != nil {
		return nil, fmt.Errorf("get object %q: %w", key, notExist(err))
	}
	return out.Body, nil
}

// Stat describes the object with HeadObject.
func (s *S3) Stat(ctx context.Context, key string) (ObjectInfo, error) {
	if err := ValidateKey(key); err != nil {
		return ObjectInfo{}, fmt.Errorf("stat object: %w", err)
	}
	out, err := s.client.HeadObject(ctx, &s3.HeadObjectInput{
		Bucket: aws.String(s.bucket),
		Key:    aws.String(s.prefix + key),
	})
	if err != nil {
		return ObjectInfo{}, fmt.Errorf("stat object %q: %w", key, notExist(err))
	}
	return ObjectInfo{Key: key, Size: aws.ToInt64(out.ContentLength), ModTime: aws.ToTime(out.LastModified)}, nil
}

// Delete deletes the object with DeleteObject.
func (s *S3) Delete(ctx context.Context, key string) error {
	if err := ValidateKey(key); err != nil {
		return fmt.Errorf("delete object: %w", err)
	}
	_, err := s.client.DeleteObject(ctx, &s3.DeleteObjectInput{
		Bucket: aws.String(s.bucket),
		Key:    aws.String(s.prefix + key),
	})
	if err != nil && !hasErrorCode(err, "NoSuchKey", "NotFound") {
		return fmt.Errorf("delete object %q: %w", key, err)
	}
	return nil
}

// List pages through ListObjectsV2, which returns keys in ascending byte
// (UTF-8 binary) order.
func (s *S3) List(ctx context.Context, prefix string, fn func(ObjectInfo) error) error {
	if err := validatePrefix(prefix); err != nil {
		return fmt.Errorf("list objects: %w", err)
	}
	pages := s3.NewListObjectsV2Paginator(s.client, &s3.ListObjectsV2Input{
		Bucket: aws.String(s.bucket),
		Prefix: nonEmpty(s.prefix + prefix),
	})
	for pages.HasMorePages() {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("list objects %q: %w", prefix, err)
		}
		page, err := pages.NextPage(ctx)
		if err != nil {
			return fmt.Errorf("list objects %q: %w", prefix, err)
		}
		for _, o := range page.Contents {
			if err := ctx.Err(); err != nil {
				return fmt.Errorf("list objects %q: %w", prefix, err)
			}
			key, ok := strings.CutPrefix(aws.ToString(o.Key), s.prefix)
			if !ok || ValidateKey(key) != nil {
				continue
			}
			if err := fn(ObjectInfo{Key: key, Size: aws.ToInt64(o.Size), ModTime: aws.ToTime(o.LastModified)}); err != nil {
				return err
			}
		}
	}
	return nil
}

// PutIfAbsent writes data in one PutObject with If-None-Match: *. The ETag
// is the one S3 returns.
func (s *S3) PutIfAbsent(ctx context.Context, key string, data []byte) (string, error) {
	if err := ValidateKey(key); err != nil {
		return "", fmt.Errorf("put object if absent: %w", err)
	}
	etag, err := s.putConditional(ctx, key, data, &s3.PutObjectInput{IfNoneMatch: aws.String("*")})
	if err != nil {
		return "", fmt.Errorf("put object %q if absent: %w", key, err)
	}
	return etag, nil
}

// PutIfMatch writes data in one PutObject with If-Match: etag.
func (s *S3) PutIfMatch(ctx context.Context, key string, data []byte, etag string) (string, error) {
	if err := ValidateKey(key); err != nil {
		return "", fmt.Errorf("put object if match: %w", err)
	}
	newETag, err := s.putConditional(ctx, key, data, &s3.PutObjectInput{IfMatch: aws.String(etag)})
	if err != nil {
		return "", fmt.Errorf("put object %q if match: %w", key, err)
	}
	return newETag, nil
}

// putConditional sends in, a PutObjectInput with its condition set, with
// data at key, the store's encryption settings, and retries while S3
// answers ConditionalRequestConflict.
func (s *S3) putConditional(ctx context.Context, key string, data []byte, in *s3.PutObjectInput) (string, error) {
	in.Bucket = aws.String(s.bucket)
	in.Key = aws.String(s.prefix + key)
	in.ContentLength = aws.Int64(int64(len(data)))
	in.ServerSideEncryption = s3types.ServerSideEncryption(s.sse)
	in.SSEKMSKeyId = nonEmpty(s.kmsKeyID)
	wait := s3ConflictWait
	for attempt := 1; ; attempt++ {
		in.Body = bytes.NewReader(data)
		out, err := s.client.PutObject(ctx, in)
		switch {
		case err == nil:
			return aws.ToString(out.ETag), nil
		case hasErrorCode(err, "PreconditionFailed") || httpStatus(err) == http.StatusPreconditionFailed:
			return "", ErrPrecondition
		case hasErrorCode(err, "NoSuchKey"):
			return "", ErrNotExist
		case !hasErrorCode(err, "ConditionalRequestConflict") || attempt == s3ConflictAttempts:
			return "", err
		}
		s.logger.Debug("conditional put conflicts with another; retrying", "key", key, "attempt", attempt, "err", err)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return "", ctx.Err()
		case <-t.C:
		}
		wait *= 2
	}
}

// GetETag reads the object with GetObject. The ETag is the one S3
// returns.
func (s *S3) GetETag(ctx context.Context, key string) (_ []byte, _ string, err error) {
	if err := ValidateKey(key); err != nil {
		return nil, "", fmt.Errorf("get object: %w", err)
	}
	out, err := s.client.GetObject(ctx, &s3.GetObjectInput{
		Bucket: aws.String(s.bucket),
		Key:    aws.String(s.prefix + key),
	})
	if err != nil {
		return nil, "", fmt.Errorf("get object %q: %w", key, notExist(err))
	}
	defer func() { err = errors.Join(err, out.Body.Close()) }()
	data, err := io.ReadAll(out.Body)
	if err != nil {
		return nil, "", fmt.Errorf("get object %q: %w", key, err)
	}
	return data, aws.ToString(out.ETag), nil
}

// httpStatus returns the HTTP status code of an S3 error, or 0.
func httpStatus(err error) int {
	var re *awshttp.ResponseError
	if errors.As(err, &re) {
		return re.HTTPStatusCode()
	}
	return 0
}

// Link checks that the object exists and presigns a GET of it that sets
// the download's Content-Type and Content-Disposition
// (response-content-type and response-content-disposition). A presigned
// URL stops working when the credentials that signed it expire, whatever
// its own expiry: Link logs a warning when they expire first, as
// temporary credentials (an assumed role, an instance profile) do.
func (s *S3) Link(ctx context.Context, key string, o LinkOptions) (Link, error) {
	o, err := linkParams(key, o)
	if err != nil {
		return Link{}, fmt.Errorf("link object: %w", err)
	}
	if _, err := s.Stat(ctx, key); err != nil {
		return Link{}, fmt.Errorf("link object: %w", err)
	}
	req, err := s.presign.PresignGetObject(ctx, &s3.GetObjectInput{
		Bucket:                     aws.String(s.bucket),
		Key:                        aws.String(s.prefix + key),
		ResponseContentDisposition: aws.String(contentDisposition(o.FileName)),
		ResponseContentType:        aws.String(o.ContentType),
	}, s3.WithPresignExpires(o.TTL))
	if err != nil {
		return Link{}, fmt.Errorf("link object %q: presign: %w", key, err)
	}
	expires, err := presignedExpiry(req.URL)
	if err != nil {
		return Link{}, fmt.Errorf("link object %q: %w", key, err)
	}
	s.checkCredentials(ctx, key, expires)
	return Link{URL: req.URL, Expires: expires}, nil
}

// checkCredentials warns if the credentials in use expire before a link
// signed with them.
func (s *S3) checkCredentials(ctx context.Context, key string, linkExpires time.Time) {
	creds, err := s.client.Options().Credentials.Retrieve(ctx)
	if err != nil {
		s.logger.Warn("retrieve credentials to check their expiry", "key", key, "err", err)
		return
	}
	if creds.CanExpire && creds.Expires.Before(linkExpires) {
		s.logger.Warn("download link outlives the credentials that signed it: it stops working when they expire",
			"key", key, "expires", linkExpires, "credentials_expire", creds.Expires, "credentials_source", creds.Source)
	}
}

// presignedExpiry returns when a SigV4 presigned URL expires: its signing
// time (X-Amz-Date) plus its validity (X-Amz-Expires).
func presignedExpiry(rawURL string) (time.Time, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return time.Time{}, fmt.Errorf("parse presigned URL: %w", err)
	}
	q := u.Query()
	signed, err := time.Parse("20060102T150405Z", q.Get("X-Amz-Date"))
	if err != nil {
		return time.Time{}, fmt.Errorf("presigned URL's X-Amz-Date: %w", err)
	}
	secs, err := strconv.ParseInt(q.Get("X-Amz-Expires"), 10, 64)
	if err != nil {
		return time.Time{}, fmt.Errorf("presigned URL's X-Amz-Expires: %w", err)
	}
	return signed.Add(time.Duration(secs) * time.Second), nil
}

// notExist returns ErrNotExist for S3's errors for a missing object, else
// err.
func notExist(err error) error {
	if hasErrorCode(err, "NoSuchKey", "NotFound") {
		return ErrNotExist
	}
	return err
}

// hasErrorCode reports whether err is an S3 API error with one of codes.
// HeadObject's errors have no body, so a missing object is "NotFound".
func hasErrorCode(err error, codes ...string) bool {
	var ae smithy.APIError
	if !errors.As(err, &ae) {
		return false
	}
	for _, c := range codes {
		if ae.ErrorCode() == c {
			return true
		}
	}
	return false
}

func nonEmpty(s string) *string {
	if s == "" {
		return nil
	}
	return aws.String(s)
}
